/* tcp.c: the TCP full proxy: accept, PROXY handshake, connect with retries, splice/copy, close.
 *
 * Everything here runs on one worker thread and touches only that worker's objects (engine.h).
 *
 * A client goes CONN_HANDSHAKE (only when the VIP accepts PROXY headers: read it within the connect
 * timeout) -> CONN_CONNECTING (pick, non-blocking connect, send the PROXY header to the backend;
 * on failure or timeout the next backend, at most MAX_CONNECT_TRIES) -> CONN_ESTABLISHED (two
 * directions moving bytes, one idle timer) -> CONN_DEAD (closed; reused after this loop iteration).
 * A reset or error on one side closes the flow at once; the other socket may wait in CONN_LINGER until
 * what was written to it has left (abort_flow), then it is reset.
 * Each socket is registered in epoll once, edge-triggered; `readable`/`writable` remember what the
 * last events said until a call returns EAGAIN.
 *
 * Counting, as tcp.py does: flows_total/active count flows that reached a backend, so
 * flows_total == active + sum(closed); a client turned away before that is counted in refused
 * (max_connections, bad_proxy_header, proxy_header_timeout, no_backend, connect_failed, client_gone,
 * no_resources, proxy_header, proxy_not_allowed; accept_failed counts failed accept4 calls, not
 * clients). bytes_to_backend / bytes_from_backend count bytes written out. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "engine.h"

#define CONN_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
#define SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
#define RESET_LINGER_US 1000000 /* most a reset waits for the bytes already written to its peer (tcp.py) */
#define LINGER_POLL_US 2000     /* how often a lingering socket's send queue is looked at */
#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static void conn_on_timer(struct worker *w, struct timer *t);
static void connect_next(struct worker *w, struct conn *c);

/* ------------------------------------------------------------------ small helpers */

/* Close with SO_LINGER 0: the peer gets a reset (RST) rather than a FIN. */
static void reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* ENOTCONN: the connection is gone already (a reset nobody was reading for; shutdown says so). */
static bool is_reset(int err) { return err == ECONNRESET || err == EPIPE || err == ESHUTDOWN || err == ENOTCONN; }

/* connect_errors key of a failed connect, as tcp.py's connect_error_reason maps the exception. */
static enum connect_error connect_error_of(int err)
{
    switch (err) {
    case ETIMEDOUT:
        return CONNECT_ERROR_TIMEOUT;
    case ECONNREFUSED:
        return CONNECT_ERROR_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ESHUTDOWN:
    case ECONNABORTED:
        return CONNECT_ERROR_RESET;
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN:
        return CONNECT_ERROR_UNREACHABLE;
    default:
        return CONNECT_ERROR_OTHER;
    }
}

void addr_of(const struct sockaddr_storage *ss, int *family, uint8_t ip[16], uint16_t *port)
{
    memset(ip, 0, 16);
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        *family = 6;
        memcpy(ip, &a->sin6_addr, 16);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        *family = 4;
        memcpy(ip, &a->sin_addr, 4);
        *port = ntohs(a->sin_port);
    }
}

/* The 16-byte form of the flow key: IPv4 as ::ffff:a.b.c.d. */
static void ip16_of(int family, const uint8_t ip[16], uint8_t out[16])
{
    if (family == 6) {
        memcpy(out, ip, 16);
        return;
    }
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, ip, 4);
}

/* ------------------------------------------------------------------ pools (worker-owned) */

static int pipe_take(struct worker_vip *wv, struct direction *d)
{
    if (wv->n_free_pipes > 0) {
        wv->n_free_pipes--;
        d->pipe_r = wv->free_pipes[wv->n_free_pipes][0];
        d->pipe_w = wv->free_pipes[wv->n_free_pipes][1];
        d->pipe_cap = wv->free_pipe_caps[wv->n_free_pipes];
        return 0;
    }
    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    int cap = fcntl(p[1], F_SETPIPE_SZ, (int)wv->vip->pipe_size);
    if (cap < 0) /* over fs.pipe-max-size or the pipe quota: keep the default size */
        cap = fcntl(p[1], F_GETPIPE_SZ);
    if (cap <= 0) {
        close(p[0]);
        close(p[1]);
        return -EINVAL;
    }
    d->pipe_r = p[0];
    d->pipe_w = p[1];
    d->pipe_cap = (uint32_t)cap;
    return 0;
}

/* Give back the direction's pipe: to the pool when drained, else closed. */
static void pipe_give(struct worker_vip *wv, struct direction *d)
{
    if (d->pipe_r < 0)
        return;
    if (d->held == 0 && wv->n_free_pipes < POOL_FREE_MAX) {
        wv->free_pipes[wv->n_free_pipes][0] = d->pipe_r;
        wv->free_pipes[wv->n_free_pipes][1] = d->pipe_w;
        wv->free_pipe_caps[wv->n_free_pipes] = d->pipe_cap;
        wv->n_free_pipes++;
    } else {
        close(d->pipe_r);
        close(d->pipe_w);
    }
    d->pipe_r = d->pipe_w = -1;
}

static size_t buf_alloc_size(const struct vip *v)
{
    return v->buffer_size > PROXY_HEADER_MAX ? v->buffer_size : PROXY_HEADER_MAX;
}

static int buf_take(struct worker_vip *wv, struct direction *d)
{
    if (wv->n_free_bufs > 0) {
        d->buf = wv->free_bufs[--wv->n_free_bufs];
    } else {
        d->buf = malloc(buf_alloc_size(wv->vip));
        if (d->buf == NULL)
            return -ENOMEM;
    }
    d->buf_start = 0;
    return 0;
}

static void buf_give(struct worker_vip *wv, struct direction *d)
{
    if (d->buf == NULL)
        return;
    if (wv->n_free_bufs < POOL_FREE_MAX)
        wv->free_bufs[wv->n_free_bufs++] = d->buf;
    else
        free(d->buf);
    d->buf = NULL;
}

/* Release both movers of a closing connection (bytes still held are dropped). */
static void movers_release(struct worker_vip *wv, struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        struct direction *d = &c->dir[i];
        if (d->held)
            CTR_ADD(wv->counters.buffered, -(int64_t)d->held);
        pipe_give(wv, d);
        buf_give(wv, d);
        d->held = 0;
    }
}

static void pools_free(struct worker_vip *wv)
{
    for (uint32_t i = 0; i < wv->n_free_pipes; i++) {
        close(wv->free_pipes[i][0]);
        close(wv->free_pipes[i][1]);
    }
    wv->n_free_pipes = 0;
    for (uint32_t i = 0; i < wv->n_free_bufs; i++)
        free(wv->free_bufs[i]);
    wv->n_free_bufs = 0;
}

/* ------------------------------------------------------------------ connection pool */

static struct conn *conn_get(struct worker *w, struct worker_vip *wv)
{
    struct conn *c = w->free_conns;
    if (c != NULL) {
        w->free_conns = c->next_again;
    } else if (w->pool_used < w->pool_size) {
        c = &w->pool[w->pool_used];
        c->index = w->pool_used++;
    } else {
        return NULL;
    }
    uint32_t index = c->index, gen0 = c->gen[0], gen1 = c->gen[1];
    memset(c, 0, sizeof(*c));
    c->index = index;
    c->gen[0] = gen0;
    c->gen[1] = gen1;
    c->wv = wv;
    c->fd[0] = c->fd[1] = -1;
    c->current = -1;
    for (int i = 0; i < 2; i++)
        c->dir[i].pipe_r = c->dir[i].pipe_w = -1;
    c->timer.fire = conn_on_timer;
    c->vnext = wv->conns;
    if (wv->conns != NULL)
        wv->conns->vprev = c;
    wv->conns = c;
    return c;
}

/* The connection is counted out (release_slot) and its sockets are closed: forget it (freed at the
 * end of this loop iteration, so events of this batch still find it dead, never reused). */
static void conn_put(struct worker *w, struct conn *c)
{
    struct worker_vip *wv = c->wv;
    timer_cancel(w, &c->timer);
    table_unref(c->table);
    c->table = NULL;
    if (c->vprev != NULL)
        c->vprev->vnext = c->vnext;
    else
        wv->conns = c->vnext;
    if (c->vnext != NULL)
        c->vnext->vprev = c->vprev;
    c->state = CONN_DEAD;
    c->wv = NULL;
    c->vprev = w->dead; /* the dead list reuses vprev */
    w->dead = c;
}

void tcp_reap(struct worker *w)
{
    struct conn *c = w->dead, *keep = NULL;
    w->dead = NULL;
    while (c != NULL) {
        struct conn *next = c->vprev;
        if (c->in_again) { /* still linked in the again list: next iteration */
            c->vprev = keep;
            keep = c;
        } else {
            c->state = CONN_FREE;
            c->gen[0]++;
            c->gen[1]++;
            c->next_again = w->free_conns;
            w->free_conns = c;
        }
        c = next;
    }
    w->dead = keep;
}

/* ------------------------------------------------------------------ ending a connection
 *
 * Counters and the max_connections count change BEFORE the sockets close: a client that sees its
 * connection end may read the counters (or connect again) at once, from another thread. */

static void release_slot(struct conn *c)
{
    atomic_fetch_sub_explicit(&c->wv->vip->conns, 1, memory_order_relaxed);
}

/* Drop the backend attempt in progress (its socket, its scheduler count). */
static void drop_backend(struct worker *w, struct conn *c)
{
    timer_cancel(w, &c->timer);
    if (c->fd[SIDE_BACKEND] >= 0) {
        close(c->fd[SIDE_BACKEND]);
        c->fd[SIDE_BACKEND] = -1;
        c->gen[SIDE_BACKEND]++;
    }
    if (c->sched_counted) {
        c->wv->sched_active[c->table->backends[c->current].slot]--;
        c->sched_counted = false;
    }
    c->current = -1;
}

/* Turn a client away before it reached a backend: RST, counted in refused[reason]. */
static void refuse(struct worker *w, struct conn *c, enum refused_reason reason)
{
    struct worker_vip *wv = c->wv;
    if (c->table != NULL)
        drop_backend(w, c);
    CTR_ADD(wv->counters.refused[reason], 1);
    release_slot(c);
    movers_release(wv, c);
    reset_close(c->fd[SIDE_CLIENT]);
    c->fd[SIDE_CLIENT] = -1;
    conn_put(w, c);
}

/* The VIP goes away: a connection not yet established is dropped, counted nowhere (tcp.py cancel). */
static void abandon(struct worker *w, struct conn *c)
{
    if (c->table != NULL)
        drop_backend(w, c);
    release_slot(c);
    movers_release(c->wv, c);
    reset_close(c->fd[SIDE_CLIENT]);
    c->fd[SIDE_CLIENT] = -1;
    conn_put(w, c);
}

/* An established flow ends: counted in closed[reason], its slot and movers given back. */
static void count_closed(struct conn *c, enum closed_reason reason)
{
    struct worker_vip *wv = c->wv;
    CTR_ADD(wv->counters.active, -1);
    CTR_ADD(wv->counters.closed[reason], 1);
    CTR_ADD(wv->counters.backends[c->slot].active, -1);
    if (c->sched_counted)
        wv->sched_active[c->slot]--;
    release_slot(c);
    movers_release(wv, c);
}

/* Close an established flow: both sockets (with RST when `reset`), counted in closed[reason]. */
static void close_flow(struct worker *w, struct conn *c, enum closed_reason reason, bool reset)
{
    count_closed(c, reason);
    for (int s = 0; s < 2; s++) {
        if (reset)
            reset_close(c->fd[s]);
        else
            close(c->fd[s]);
        c->fd[s] = -1;
    }
    conn_put(w, c);
}

/* Bytes written to `fd` its peer has not acknowledged yet (SIOCOUTQ); 0 on error. */
static int unsent(int fd)
{
    int n = 0;
    return ioctl(fd, SIOCOUTQ, &n) < 0 || n < 0 ? 0 : n;
}

/* Socket `s` failed with `err`: close both at once, resetting the other's connection too -- once the
 * bytes already written to it have left (a reset drops what the kernel still holds), at most
 * RESET_LINGER_US: its peer gets the data, then the reset. The flow is counted closed at once; the
 * surviving socket waits in CONN_LINGER (conn_on_timer). */
static void abort_flow(struct worker *w, struct conn *c, enum side s, int err)
{
    enum closed_reason r;
    if (s == SIDE_CLIENT)
        r = is_reset(err) ? CLOSED_CLIENT_RESET : CLOSED_CLIENT_ERROR;
    else
        r = is_reset(err) ? CLOSED_BACKEND_RESET : CLOSED_BACKEND_ERROR;
    enum side other = s == SIDE_CLIENT ? SIDE_BACKEND : SIDE_CLIENT;
    if (unsent(c->fd[other]) == 0) {
        close_flow(w, c, r, true);
        return;
    }
    count_closed(c, r);
    reset_close(c->fd[s]);
    c->fd[s] = -1;
    c->gen[s]++;
    c->state = CONN_LINGER;
    c->last_active_us = w->now_us + RESET_LINGER_US; /* the deadline */
    timer_arm(w, &c->timer, w->now_us + LINGER_POLL_US);
}

/* A lingering flow's socket: reset once its peer has everything, or at the deadline. */
static void linger_check(struct worker *w, struct conn *c, bool now)
{
    int fd = c->fd[SIDE_CLIENT] >= 0 ? c->fd[SIDE_CLIENT] : c->fd[SIDE_BACKEND];
    if (!now && unsent(fd) > 0 && w->now_us < c->last_active_us) {
        timer_arm(w, &c->timer, w->now_us + LINGER_POLL_US);
        return;
    }
    reset_close(fd);
    c->fd[SIDE_CLIENT] = c->fd[SIDE_BACKEND] = -1;
    conn_put(w, c);
}

/* ------------------------------------------------------------------ moving bytes */

/* Read into the (empty) direction: bytes read, 0 at end of stream, -errno. */
static ssize_t dir_fill(struct worker_vip *wv, struct direction *d, int src)
{
    ssize_t n;
    if (wv->vip->use_splice && (d->pipe_r >= 0 || pipe_take(wv, d) == 0)) {
        n = splice(src, NULL, d->pipe_w, NULL, d->pipe_cap, SPLICE_FLAGS);
    } else {
        if (d->buf == NULL && buf_take(wv, d) < 0)
            return -ENOMEM;
        d->buf_start = 0;
        n = recv(src, d->buf, wv->vip->buffer_size, 0);
    }
    return n < 0 ? -errno : n;
}

/* Write what the destination takes: bytes written, -errno. */
static ssize_t dir_drain(struct direction *d, int dst)
{
    ssize_t n;
    if (d->pipe_r >= 0) {
        n = splice(d->pipe_r, NULL, dst, NULL, d->held, SPLICE_FLAGS);
    } else {
        n = send(dst, d->buf + d->buf_start, d->held, MSG_NOSIGNAL);
        if (n > 0)
            d->buf_start += (uint32_t)n;
    }
    return n < 0 ? -errno : n;
}

/* Move direction i as far as readiness allows. Flow control: the source is read only once everything
 * held was written. Returns -1 when the flow was closed. */
static int dir_pump(struct worker *w, struct conn *c, int i)
{
    struct worker_vip *wv = c->wv;
    struct direction *d = &c->dir[i];
    enum side src = i == 0 ? SIDE_CLIENT : SIDE_BACKEND;
    enum side dst = i == 0 ? SIDE_BACKEND : SIDE_CLIENT;
    struct backend_counters *bc = &wv->counters.backends[c->slot];
    for (int round = 0; round < PUMP_ROUNDS; round++) {
        if (d->held) {
            if (!c->writable[dst])
                return 0;
            ssize_t n = dir_drain(d, c->fd[dst]);
            if (n == -EAGAIN || n == 0) {
                c->writable[dst] = false;
                return 0;
            }
            if (n == -EINTR)
                continue;
            if (n < 0) {
                abort_flow(w, c, dst, (int)-n);
                return -1;
            }
            d->held -= (uint32_t)n;
            CTR_ADD(wv->counters.buffered, -n);
            if (i == 0)
                CTR_ADD(bc->bytes_to_backend, (uint64_t)n);
            else
                CTR_ADD(bc->bytes_from_backend, (uint64_t)n);
            c->last_active_us = w->now_us;
            continue;
        }
        pipe_give(wv, d); /* drained: an idle flow holds no pipe and no buffer */
        buf_give(wv, d);
        if (d->eof) {
            if (!d->done) {
                if (c->dir[1 - i].done) { /* the last direction: close sends its FIN (counted first) */
                    close_flow(w, c, CLOSED_DONE, false);
                    return -1;
                }
                if (shutdown(c->fd[dst], SHUT_WR) < 0) { /* ENOTCONN: reset before, counted so */
                    abort_flow(w, c, dst, errno);
                    return -1;
                }
                d->done = true;
            }
            return 0;
        }
        if (!c->readable[src])
            return 0;
        ssize_t n = dir_fill(wv, d, c->fd[src]);
        if (n == -EAGAIN) {
            c->readable[src] = false;
            pipe_give(wv, d);
            buf_give(wv, d);
            return 0;
        }
        if (n == -EINTR)
            continue;
        if (n == -ENOMEM) {
            close_flow(w, c, i == 0 ? CLOSED_CLIENT_ERROR : CLOSED_BACKEND_ERROR, true);
            return -1;
        }
        if (n < 0) {
            abort_flow(w, c, src, (int)-n);
            return -1;
        }
        if (n == 0) {
            d->eof = true;
            continue;
        }
        d->held = (uint32_t)n;
        if (d->pipe_r < 0 && (uint32_t)n < wv->vip->buffer_size && !c->hup[src])
            c->readable[src] = false; /* a short recv emptied the receive queue: new bytes raise an event */
        CTR_ADD(wv->counters.buffered, n);
        if (n > CTR_LOAD(wv->counters.peak))
            CTR_SET(wv->counters.peak, n);
        c->last_active_us = w->now_us;
    }
    if (!c->in_again) { /* more to do: after the other flows had their turn */
        c->in_again = true;
        c->next_again = w->again;
        w->again = c;
    }
    return 0;
}

static void pump(struct worker *w, struct conn *c)
{
    if (dir_pump(w, c, 0) < 0)
        return;
    (void)dir_pump(w, c, 1);
}

void tcp_run_again(struct worker *w)
{
    struct conn *c = w->again;
    w->again = NULL;
    while (c != NULL) {
        struct conn *next = c->next_again;
        c->in_again = false;
        if (c->state == CONN_ESTABLISHED)
            pump(w, c);
        c = next;
    }
}

/* ------------------------------------------------------------------ connecting */

static void established(struct worker *w, struct conn *c)
{
    struct worker_vip *wv = c->wv;
    timer_cancel(w, &c->timer);
    c->slot = c->table->backends[c->current].slot;
    struct backend_counters *bc = &wv->counters.backends[c->slot];
    CTR_ADD(bc->connect_ok, 1);
    CTR_ADD(bc->flows_total, 1);
    CTR_ADD(bc->active, 1);
    CTR_ADD(wv->counters.flows_total, 1);
    CTR_ADD(wv->counters.active, 1);
    table_unref(c->table); /* the flow keeps its backend's slot, not the table */
    c->table = NULL;
    c->state = CONN_ESTABLISHED;
    c->last_active_us = w->now_us;
    timer_arm(w, &c->timer, w->now_us + wv->table->idle_timeout_us);
    pump(w, c);
}

static void attempt_failed(struct worker *w, struct conn *c, int err)
{
    uint32_t slot = c->table->backends[c->current].slot;
    CTR_ADD(c->wv->counters.backends[slot].connect_errors[connect_error_of(err)], 1);
    drop_backend(w, c);
}

/* The backend socket is writable (or failed: `failed`): check the connect, send the PROXY header,
 * establish. Writable without an error means connected: SO_ERROR is read only on EPOLLERR/EPOLLHUP. */
static void connection_ready(struct worker *w, struct conn *c, bool failed)
{
    int fd = c->fd[SIDE_BACKEND];
    int err = 0;
    socklen_t len = sizeof(err);
    if (failed && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (failed && err == 0)
        err = ECONNRESET; /* hung up without a pending error */
    while (err == 0 && c->out_sent < c->out_len) {
        ssize_t n = send(fd, c->out_header + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                return; /* the rest when the socket takes it, within the same timeout */
            if (errno != EINTR)
                err = errno;
            continue;
        }
        c->out_sent += (uint8_t)n;
    }
    if (err != 0) {
        attempt_failed(w, c, err);
        connect_next(w, c);
        return;
    }
    established(w, c);
}

static double unit_draw(struct worker *w) { return (double)(worker_random(w) >> 11) * 0x1.0p-53; }

/* Connect to the next backend the scheduler offers, or refuse the client. */
static void connect_next(struct worker *w, struct conn *c)
{
    struct worker_vip *wv = c->wv;
    struct eng_table *t = c->table;
    uint32_t tries = t->sched.n < MAX_CONNECT_TRIES ? t->sched.n : MAX_CONNECT_TRIES;
    while (c->n_tried < tries) {
        const int64_t *active = NULL;
        if (t->sched.kind == SCHED_LEAST_CONN || t->sched.kind == SCHED_RANDOM_TWO) {
            for (uint32_t i = 0; i < t->sched.n; i++)
                wv->active_scratch[i] = wv->sched_active[t->backends[i].slot];
            active = wv->active_scratch;
        }
        double r1 = 0, r2 = 0;
        if (t->sched.kind == SCHED_RANDOM_TWO) {
            r1 = unit_draw(w);
            r2 = unit_draw(w);
        }
        int32_t idx = sched_pick(&t->sched, c->hash, c->tried, c->n_tried,
                                 t->rr_current + (size_t)w->index * t->sched.n, active, r1, r2);
        if (idx < 0)
            break;
        c->tried[c->n_tried++] = (uint32_t)idx;
        const struct eng_backend *b = &t->backends[idx];
        CTR_ADD(wv->counters.backends[b->slot].connect_attempts, 1);
        int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) { /* EMFILE and friends */
            refuse(w, c, REFUSED_NO_RESOURCES);
            return;
        }
        c->fd[SIDE_BACKEND] = fd;
        c->gen[SIDE_BACKEND]++;
        c->current = idx;
        c->sched_counted = true;
        wv->sched_active[b->slot]++;
        c->readable[SIDE_BACKEND] = c->writable[SIDE_BACKEND] = c->hup[SIDE_BACKEND] = false;
        c->out_sent = 0;
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
            attempt_failed(w, c, errno);
            continue;
        }
        int rc = connect(fd, (const struct sockaddr *)&b->addr, b->addrlen);
        if (rc < 0 && errno != EINPROGRESS) {
            attempt_failed(w, c, errno);
            continue;
        }
        if (epoll_add(w, fd, CONN_EVENTS, H_BACKEND, c->gen[SIDE_BACKEND], c->index) < 0) {
            attempt_failed(w, c, errno);
            continue;
        }
        c->state = CONN_CONNECTING;
        timer_arm(w, &c->timer, w->now_us + t->connect_timeout_us);
        if (rc == 0)
            connection_ready(w, c, false);
        return;
    }
    refuse(w, c, c->n_tried ? REFUSED_CONNECT_FAILED : REFUSED_NO_BACKEND);
}

/* The client (and its PROXY header, if any) is known: pick, build the header for the backend, connect. */
static void start_connect(struct worker *w, struct conn *c)
{
    struct eng_table *t = c->wv->table;
    table_ref(t);
    c->table = t;
    uint8_t src16[16], dst16[16], key[FLOW_KEY_LEN];
    uint16_t src_port;
    if (c->flow_known && c->flow.family != 0) { /* client -> VIP, as the header says */
        ip16_of(c->flow.family, c->flow.src, src16);
        src_port = c->flow.src_port;
    } else {
        ip16_of(c->real.family, c->real.src, src16);
        src_port = c->real.src_port;
    }
    ip16_of(c->real.family, c->real.dst, dst16);
    flow_key_build(key, src16, dst16, src_port, c->real.dst_port, IPPROTO_TCP);
    c->hash = flow_hash(key);
    if (t->proxy_out) {
        const struct proxy_addrs *a = c->flow_known ? &c->flow : &c->real;
        int n = proxy_header_build(c->out_header, sizeof(c->out_header), t->proxy_out, 0, a);
        if (n < 0) {
            refuse(w, c, REFUSED_PROXY_HEADER);
            return;
        }
        c->out_len = (uint8_t)n;
    }
    connect_next(w, c);
}

/* ------------------------------------------------------------------ the client's PROXY header */

static void handshake_read(struct worker *w, struct conn *c)
{
    struct direction *d = &c->dir[0];
    if (d->buf == NULL && buf_take(c->wv, d) < 0) {
        refuse(w, c, REFUSED_NO_RESOURCES);
        return;
    }
    while (d->held < PROXY_HEADER_MAX) {
        ssize_t n = recv(c->fd[SIDE_CLIENT], d->buf + d->held, PROXY_HEADER_MAX - d->held, 0);
        if (n < 0 && errno == EAGAIN) {
            c->readable[SIDE_CLIENT] = false;
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* end of stream before the header ended, or an error */
            refuse(w, c, REFUSED_BAD_PROXY_HEADER);
            return;
        }
        d->held += (uint32_t)n;
        struct proxy_addrs addrs;
        int r = proxy_header_parse(d->buf, d->held, PROXY_HEADER_MAX, &addrs);
        if (r == PROXY_PARSE_INVALID)
            break;
        if (r > 0) {
            c->flow = addrs;
            c->flow_known = true;
            d->buf_start = (uint32_t)r; /* bytes past the header go to the backend after its header */
            d->held -= (uint32_t)r;
            if (d->held == 0)
                buf_give(c->wv, d);
            else
                CTR_ADD(c->wv->counters.buffered, d->held);
            timer_cancel(w, &c->timer);
            start_connect(w, c);
            return;
        }
    }
    refuse(w, c, REFUSED_BAD_PROXY_HEADER);
}

/* ------------------------------------------------------------------ events and timers */

void tcp_on_event(struct worker *w, struct conn *c, enum side s, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->readable[s] = true;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->hup[s] = true;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        c->writable[s] = true;
    switch (c->state) {
    case CONN_HANDSHAKE:
        if (s == SIDE_CLIENT && c->readable[SIDE_CLIENT])
            handshake_read(w, c);
        break;
    case CONN_CONNECTING:
        if (s == SIDE_BACKEND && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            connection_ready(w, c, (events & (EPOLLERR | EPOLLHUP)) != 0);
        break;
    case CONN_ESTABLISHED:
        pump(w, c);
        break;
    default:
        break;
    }
}

static void conn_on_timer(struct worker *w, struct timer *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    switch (c->state) {
    case CONN_HANDSHAKE:
        refuse(w, c, REFUSED_PROXY_HEADER_TIMEOUT);
        break;
    case CONN_CONNECTING:
        attempt_failed(w, c, ETIMEDOUT);
        connect_next(w, c);
        break;
    case CONN_LINGER:
        linger_check(w, c, false);
        break;
    case CONN_ESTABLISHED: {
        /* Activity only moves a timestamp; the timer notices it here and re-arms once. */
        uint64_t deadline = c->last_active_us + c->wv->table->idle_timeout_us;
        if (w->now_us + 1000 >= deadline)
            close_flow(w, c, CLOSED_IDLE_TIMEOUT, false);
        else
            timer_arm(w, &c->timer, deadline);
        break;
    }
    default:
        break;
    }
}

/* ------------------------------------------------------------------ accepting */

/* Whether the peer (family 4/6, address as addr_of gives it) is in one of the table's accept_from prefixes. */
static bool proxy_allowed(const struct eng_table *t, int family, const uint8_t ip[16])
{
    for (uint32_t i = 0; i < t->n_accept_from; i++) {
        const struct accept_prefix *a = &t->accept_from[i];
        if (a->family != family)
            continue;
        unsigned full = a->len / 8, rest = a->len % 8;
        if (memcmp(a->ip, ip, full) != 0)
            continue;
        if (rest == 0 || ((a->ip[full] ^ ip[full]) & (uint8_t)(0xff << (8 - rest))) == 0)
            return true;
    }
    return false;
}

static void accepted(struct worker *w, struct worker_vip *wv, int fd, const struct sockaddr_storage *peer)
{
    struct vip *v = wv->vip;
    unsigned before = atomic_fetch_add_explicit(&v->conns, 1, memory_order_relaxed);
    if (before >= wv->table->max_connections) {
        atomic_fetch_sub_explicit(&v->conns, 1, memory_order_relaxed);
        reset_close(fd);
        CTR_ADD(wv->counters.refused[REFUSED_MAX_CONNECTIONS], 1);
        return;
    }
    struct conn *c = conn_get(w, wv);
    if (c == NULL) {
        atomic_fetch_sub_explicit(&v->conns, 1, memory_order_relaxed);
        reset_close(fd);
        CTR_ADD(wv->counters.refused[REFUSED_NO_RESOURCES], 1);
        return;
    }
    c->fd[SIDE_CLIENT] = fd;
    c->state = CONN_HANDSHAKE;
    uint8_t ip[16];
    addr_of(peer, &c->real.family, ip, &c->real.src_port);
    memcpy(c->real.src, ip, 16);
    if (v->local_wildcard) {
        struct sockaddr_storage local;
        socklen_t len = sizeof(local);
        if (getsockname(fd, (struct sockaddr *)&local, &len) < 0) {
            refuse(w, c, REFUSED_CLIENT_GONE);
            return;
        }
        int family;
        addr_of(&local, &family, c->real.dst, &c->real.dst_port);
    } else {
        memcpy(c->real.dst, v->local_addrs.dst, 16);
        c->real.dst_port = v->local_addrs.dst_port;
    }
    /* TCP_NODELAY: inherited from the listening socket (vip.c), no setsockopt per connection */
    if (epoll_add(w, fd, CONN_EVENTS, H_CLIENT, c->gen[SIDE_CLIENT], c->index) < 0) {
        refuse(w, c, REFUSED_NO_RESOURCES);
        return;
    }
    if (wv->table->accept_proxy) {
        if (!proxy_allowed(wv->table, c->real.family, c->real.src)) { /* only they may say who the client is */
            refuse(w, c, REFUSED_PROXY_NOT_ALLOWED);
            return;
        }
        timer_arm(w, &c->timer, w->now_us + wv->table->connect_timeout_us);
        return; /* the header is read when the client socket reports data */
    }
    start_connect(w, c);
}

static void on_resume(struct worker *w, struct timer *t)
{
    struct worker_vip *wv = container_of(t, struct worker_vip, resume);
    (void)w;
    wv->paused = false;
    if (wv->listen_fd < 0)
        return;
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = (uint64_t)H_LISTEN << 56 | wv->vip->id;
    (void)epoll_ctl(w->epfd, EPOLL_CTL_MOD, wv->listen_fd, &ev);
}

void tcp_on_listen(struct worker *w, struct worker_vip *wv)
{
    for (int i = 0; i < ACCEPT_BATCH && wv->listen_fd >= 0; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        int fd = accept4(wv->listen_fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accepted(w, wv, fd, &peer);
            continue;
        }
        switch (errno) {
        case EAGAIN:
            return;
        case EINTR:
        case ECONNABORTED: /* and the network errors accept(2) passes on for the new connection */
        case EPROTO:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
        case ENETDOWN:
            continue;
        default: { /* EMFILE, ENFILE, ENOBUFS, ENOMEM...: counted, back off instead of spinning (the
                    * listen socket is level-triggered) */
            CTR_ADD(wv->counters.refused[REFUSED_ACCEPT_FAILED], 1);
            struct epoll_event ev = {.events = 0};
            ev.data.u64 = (uint64_t)H_LISTEN << 56 | wv->vip->id;
            (void)epoll_ctl(w->epfd, EPOLL_CTL_MOD, wv->listen_fd, &ev);
            wv->paused = true;
            timer_arm(w, &wv->resume, w->now_us + ACCEPT_PAUSE_US);
            return;
        }
        }
    }
}

/* ------------------------------------------------------------------ commands, worker side */

void tcp_vip_attach(struct worker *w, struct worker_vip *wv)
{
    struct vip *v = wv->vip;
    wv->w = w;
    wv->resume.fire = on_resume;
    table_ref(v->table);
    wv->table = v->table;
    wv->listen_fd = v->listen_fds[w->index];
    v->listen_fds[w->index] = -1; /* the worker owns it now */
    if (epoll_add(w, wv->listen_fd, EPOLLIN, H_LISTEN, 0, v->id) < 0) {
        close(wv->listen_fd); /* cannot happen short of ENOMEM: this worker takes no connections */
        wv->listen_fd = -1;
    }
    w->vips[v->id] = wv;
}

void tcp_vip_update(struct worker *w, struct worker_vip *wv, struct eng_table *t)
{
    (void)w;
    table_ref(t);
    struct eng_table *old = wv->table;
    wv->table = t; /* connections being connected keep the table they started with */
    table_unref(old);
}

void tcp_stop_accepting(struct worker *w, struct worker_vip *wv)
{
    timer_cancel(w, &wv->resume);
    if (wv->listen_fd >= 0) {
        close(wv->listen_fd); /* leaves the epoll set with it */
        wv->listen_fd = -1;
    }
}

unsigned long tcp_close_backend_flows(struct worker *w, struct worker_vip *wv, uint32_t slot, enum closed_reason r)
{
    unsigned long n = 0;
    struct conn *c = wv->conns;
    while (c != NULL) {
        struct conn *next = c->vnext;
        if (c->state == CONN_ESTABLISHED && c->slot == slot) {
            close_flow(w, c, r, false);
            n++;
        }
        c = next;
    }
    return n;
}

void tcp_vip_detach(struct worker *w, struct worker_vip *wv)
{
    tcp_stop_accepting(w, wv);
    while (wv->conns != NULL) {
        struct conn *c = wv->conns;
        if (c->state == CONN_ESTABLISHED)
            close_flow(w, c, CLOSED_SHUTDOWN, false);
        else if (c->state == CONN_LINGER)
            linger_check(w, c, true);
        else
            abandon(w, c);
    }
    pools_free(wv);
    w->vips[wv->vip->id] = NULL;
    table_unref(wv->table);
    wv->table = NULL;
}
