/* tcp.c: the TCP full proxy: accept, the connection pool, events and timers, worker commands.
 *
 * The rest of a connection's life is in tcp_connect.c (PROXY handshake, pick, connect with retries)
 * and tcp_move.c (splice/copy, half-close, resets, close); tcp.h is what the three share.
 *
 * Everything here runs on one worker thread and touches only that worker's objects (engine.h).
 *
 * A client goes CONN_HANDSHAKE (only when the VIP accepts PROXY headers: read it within the connect
 * timeout) -> CONN_CONNECTING (pick, non-blocking connect, send the PROXY header to the backend;
 * on failure or timeout the next backend, at most MAX_CONNECT_TRIES) -> CONN_ESTABLISHED (two
 * directions moving bytes, one idle timer) -> CONN_DEAD (closed; reused after this loop iteration).
 * A reset or error on one side closes the flow at once; the other socket may wait in CONN_LINGER until
 * what was written to it has left (tcp_move.c abort_flow), then it is reset.
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
#include <stddef.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tcp.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static void conn_on_timer(struct worker *w, struct timer *t);

/* ------------------------------------------------------------------ small helpers */

void tcp_reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
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
void tcp_conn_put(struct worker *w, struct conn *c)
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

void tcp_release_slot(struct conn *c)
{
    atomic_fetch_sub_explicit(&c->wv->vip->conns, 1, memory_order_relaxed);
}

/* Drop the backend attempt in progress (its socket, its scheduler count). */
void tcp_drop_backend(struct worker *w, struct conn *c)
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
void tcp_refuse(struct worker *w, struct conn *c, enum refused_reason reason)
{
    struct worker_vip *wv = c->wv;
    if (c->table != NULL)
        tcp_drop_backend(w, c);
    CTR_ADD(wv->counters.refused[reason], 1);
    tcp_release_slot(c);
    tcp_movers_release(wv, c);
    tcp_reset_close(c->fd[SIDE_CLIENT]);
    c->fd[SIDE_CLIENT] = -1;
    tcp_conn_put(w, c);
}

/* The VIP goes away: a connection not yet established is dropped, counted nowhere (tcp.py cancel). */
static void abandon(struct worker *w, struct conn *c)
{
    if (c->table != NULL)
        tcp_drop_backend(w, c);
    tcp_release_slot(c);
    tcp_movers_release(c->wv, c);
    tcp_reset_close(c->fd[SIDE_CLIENT]);
    c->fd[SIDE_CLIENT] = -1;
    tcp_conn_put(w, c);
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
            tcp_handshake_read(w, c);
        break;
    case CONN_CONNECTING:
        if (s == SIDE_BACKEND && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            tcp_connection_ready(w, c, (events & (EPOLLERR | EPOLLHUP)) != 0);
        break;
    case CONN_ESTABLISHED:
        tcp_pump(w, c);
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
        tcp_refuse(w, c, REFUSED_PROXY_HEADER_TIMEOUT);
        break;
    case CONN_CONNECTING:
        tcp_attempt_failed(w, c, ETIMEDOUT);
        tcp_connect_next(w, c);
        break;
    case CONN_LINGER:
        tcp_linger_check(w, c, false);
        break;
    case CONN_ESTABLISHED: {
        /* Activity only moves a timestamp; the timer notices it here and re-arms once. */
        uint64_t deadline = c->last_active_us + c->wv->table->idle_timeout_us;
        if (w->now_us + 1000 >= deadline)
            tcp_close_flow(w, c, CLOSED_IDLE_TIMEOUT, false);
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
        tcp_reset_close(fd);
        CTR_ADD(wv->counters.refused[REFUSED_MAX_CONNECTIONS], 1);
        return;
    }
    struct conn *c = conn_get(w, wv);
    if (c == NULL) {
        atomic_fetch_sub_explicit(&v->conns, 1, memory_order_relaxed);
        tcp_reset_close(fd);
        CTR_ADD(wv->counters.refused[REFUSED_NO_RESOURCES], 1);
        return;
    }
    c->fd[SIDE_CLIENT] = fd;
    c->state = CONN_HANDSHAKE;
    c->accepted_us = w->now_us;
    uint8_t ip[16];
    addr_of(peer, &c->real.family, ip, &c->real.src_port);
    memcpy(c->real.src, ip, 16);
    if (v->local_wildcard) {
        struct sockaddr_storage local;
        socklen_t len = sizeof(local);
        if (getsockname(fd, (struct sockaddr *)&local, &len) < 0) {
            tcp_refuse(w, c, REFUSED_CLIENT_GONE);
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
        tcp_refuse(w, c, REFUSED_NO_RESOURCES);
        return;
    }
    if (wv->table->accept_proxy) {
        if (!proxy_allowed(wv->table, c->real.family, c->real.src)) { /* only they may say who the client is */
            tcp_refuse(w, c, REFUSED_PROXY_NOT_ALLOWED);
            return;
        }
        timer_arm(w, &c->timer, w->now_us + wv->table->connect_timeout_us);
        return; /* the header is read when the client socket reports data */
    }
    tcp_start_connect(w, c);
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
            tcp_close_flow(w, c, r, false);
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
            tcp_close_flow(w, c, CLOSED_SHUTDOWN, false);
        else if (c->state == CONN_LINGER)
            tcp_linger_check(w, c, true);
        else
            abandon(w, c);
    }
    tcp_pools_free(wv);
    w->vips[wv->vip->id] = NULL;
    table_unref(wv->table);
    wv->table = NULL;
}
