/* tcp_move.c: an established flow's bytes: pipes and buffers, splice or copy, half-close, resets, close.
 *
 * Each direction reads its source only once everything it holds was written (flow control); a drained
 * direction gives its pipe or buffer back to the worker's pool. A reset or error on one side closes
 * the flow at once; the other socket may wait in CONN_LINGER until what was written to it has left. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "flowlog.h"
#include "tcp.h"

#define SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
#define RESET_LINGER_US 1000000 /* most a reset waits for the bytes already written to its peer (tcp.py) */
#define LINGER_POLL_US 2000     /* how often a lingering socket's send queue is looked at */

/* ENOTCONN: the connection is gone already (a reset nobody was reading for; shutdown says so). */
static bool is_reset(int err) { return err == ECONNRESET || err == EPIPE || err == ESHUTDOWN || err == ENOTCONN; }

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

int tcp_buf_take(struct worker_vip *wv, struct direction *d)
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

void tcp_buf_give(struct worker_vip *wv, struct direction *d)
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
void tcp_movers_release(struct worker_vip *wv, struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        struct direction *d = &c->dir[i];
        if (d->held)
            CTR_ADD(wv->counters.buffered, -(int64_t)d->held);
        pipe_give(wv, d);
        tcp_buf_give(wv, d);
        d->held = 0;
    }
}

void tcp_pools_free(struct worker_vip *wv)
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


/* An established flow ends: counted in closed[reason], its slot and movers given back. */
static void count_closed(struct conn *c, enum closed_reason reason)
{
    struct worker_vip *wv = c->wv;
    CTR_ADD(wv->counters.active, -1);
    CTR_ADD(wv->counters.closed[reason], 1);
    histogram_observe(&wv->counters.flow_duration, flow_duration_bounds_us, wv->w->now_us - c->accepted_us);
    CTR_ADD(wv->counters.backends[c->slot].active, -1);
    flowlog_tcp_closed(c, reason);
    if (c->sched_counted)
        wv->sched_active[c->slot]--;
    tcp_release_slot(c);
    tcp_movers_release(wv, c);
}

/* Close an established flow: both sockets (with RST when `reset`), counted in closed[reason]. */
void tcp_close_flow(struct worker *w, struct conn *c, enum closed_reason reason, bool reset)
{
    count_closed(c, reason);
    for (int s = 0; s < 2; s++) {
        if (reset)
            tcp_reset_close(c->fd[s]);
        else
            close(c->fd[s]);
        c->fd[s] = -1;
    }
    tcp_conn_put(w, c);
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
        tcp_close_flow(w, c, r, true);
        return;
    }
    count_closed(c, r);
    tcp_reset_close(c->fd[s]);
    c->fd[s] = -1;
    c->gen[s]++;
    c->state = CONN_LINGER;
    c->last_active_us = w->now_us + RESET_LINGER_US; /* the deadline */
    timer_arm(w, &c->timer, w->now_us + LINGER_POLL_US);
}

/* A lingering flow's socket: reset once its peer has everything, or at the deadline. */
void tcp_linger_check(struct worker *w, struct conn *c, bool now)
{
    int fd = c->fd[SIDE_CLIENT] >= 0 ? c->fd[SIDE_CLIENT] : c->fd[SIDE_BACKEND];
    if (!now && unsent(fd) > 0 && w->now_us < c->last_active_us) {
        timer_arm(w, &c->timer, w->now_us + LINGER_POLL_US);
        return;
    }
    tcp_reset_close(fd);
    c->fd[SIDE_CLIENT] = c->fd[SIDE_BACKEND] = -1;
    tcp_conn_put(w, c);
}

/* ------------------------------------------------------------------ moving bytes */

/* Read into the (empty) direction: bytes read, 0 at end of stream, -errno. */
static ssize_t dir_fill(struct worker_vip *wv, struct direction *d, int src)
{
    ssize_t n;
    if (wv->vip->use_splice && (d->pipe_r >= 0 || pipe_take(wv, d) == 0)) {
        n = splice(src, NULL, d->pipe_w, NULL, d->pipe_cap, SPLICE_FLAGS);
    } else {
        if (d->buf == NULL && tcp_buf_take(wv, d) < 0)
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
            c->moved[i] += (uint64_t)n;
            c->last_active_us = w->now_us;
            continue;
        }
        pipe_give(wv, d); /* drained: an idle flow holds no pipe and no buffer */
        tcp_buf_give(wv, d);
        if (d->eof) {
            if (!d->done) {
                if (c->dir[1 - i].done) { /* the last direction: close sends its FIN (counted first) */
                    tcp_close_flow(w, c, CLOSED_DONE, false);
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
            tcp_buf_give(wv, d);
            return 0;
        }
        if (n == -EINTR)
            continue;
        if (n == -ENOMEM) {
            tcp_close_flow(w, c, i == 0 ? CLOSED_CLIENT_ERROR : CLOSED_BACKEND_ERROR, true);
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

void tcp_pump(struct worker *w, struct conn *c)
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
            tcp_pump(w, c);
        c = next;
    }
}
