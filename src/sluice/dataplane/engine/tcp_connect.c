/* tcp_connect.c: a client's way to a backend: its PROXY header, the pick, connect with retries.
 *
 * CONN_HANDSHAKE reads the client's PROXY header (when the VIP accepts them) within the connect
 * timeout; CONN_CONNECTING tries at most MAX_CONNECT_TRIES backends the scheduler offers, sends the
 * PROXY header to the backend, then the flow is established and tcp_move.c moves its bytes. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "tcp.h"

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

/* ------------------------------------------------------------------ connecting */

static void established(struct worker *w, struct conn *c)
{
    struct worker_vip *wv = c->wv;
    timer_cancel(w, &c->timer);
    c->slot = c->table->backends[c->current].slot;
    struct backend_counters *bc = &wv->counters.backends[c->slot];
    CTR_ADD(bc->connect_ok, 1);
    histogram_observe(&bc->connect_latency, connect_latency_bounds_us, w->now_us - c->connect_start_us);
    CTR_ADD(bc->flows_total, 1);
    CTR_ADD(bc->active, 1);
    CTR_ADD(wv->counters.flows_total, 1);
    CTR_ADD(wv->counters.active, 1);
    table_unref(c->table); /* the flow keeps its backend's slot, not the table */
    c->table = NULL;
    c->state = CONN_ESTABLISHED;
    c->last_active_us = w->now_us;
    timer_arm(w, &c->timer, w->now_us + wv->table->idle_timeout_us);
    tcp_pump(w, c);
}

void tcp_attempt_failed(struct worker *w, struct conn *c, int err)
{
    uint32_t slot = c->table->backends[c->current].slot;
    CTR_ADD(c->wv->counters.backends[slot].connect_errors[connect_error_of(err)], 1);
    tcp_drop_backend(w, c);
}

/* The backend socket is writable (or failed: `failed`): check the connect, send the PROXY header,
 * establish. Writable without an error means connected: SO_ERROR is read only on EPOLLERR/EPOLLHUP. */
void tcp_connection_ready(struct worker *w, struct conn *c, bool failed)
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
        tcp_attempt_failed(w, c, err);
        tcp_connect_next(w, c);
        return;
    }
    established(w, c);
}

static double unit_draw(struct worker *w) { return (double)(worker_random(w) >> 11) * 0x1.0p-53; }

/* Connect to the next backend the scheduler offers, or refuse the client. */
void tcp_connect_next(struct worker *w, struct conn *c)
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
        if (c->n_tried > 1)
            CTR_ADD(wv->counters.retries, 1);
        const struct eng_backend *b = &t->backends[idx];
        CTR_ADD(wv->counters.backends[b->slot].connect_attempts, 1);
        int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) { /* EMFILE and friends */
            tcp_refuse(w, c, REFUSED_NO_RESOURCES);
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
            tcp_attempt_failed(w, c, errno);
            continue;
        }
        c->connect_start_us = w->now_us;
        int rc = connect(fd, (const struct sockaddr *)&b->addr, b->addrlen);
        if (rc < 0 && errno != EINPROGRESS) {
            tcp_attempt_failed(w, c, errno);
            continue;
        }
        if (epoll_add(w, fd, CONN_EVENTS, H_BACKEND, c->gen[SIDE_BACKEND], c->index) < 0) {
            tcp_attempt_failed(w, c, errno);
            continue;
        }
        c->state = CONN_CONNECTING;
        timer_arm(w, &c->timer, w->now_us + t->connect_timeout_us);
        if (rc == 0)
            tcp_connection_ready(w, c, false);
        return;
    }
    tcp_refuse(w, c, c->n_tried ? REFUSED_CONNECT_FAILED : REFUSED_NO_BACKEND);
}

/* The client (and its PROXY header, if any) is known: pick, build the header for the backend, connect. */
void tcp_start_connect(struct worker *w, struct conn *c)
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
    c->hash = sched_flow_hash(&t->sched, key);
    if (t->proxy_out) {
        const struct proxy_addrs *a = c->flow_known ? &c->flow : &c->real;
        int n = proxy_header_build(c->out_header, sizeof(c->out_header), t->proxy_out, 0, a);
        if (n < 0) {
            tcp_refuse(w, c, REFUSED_PROXY_HEADER);
            return;
        }
        c->out_len = (uint8_t)n;
    }
    tcp_connect_next(w, c);
}

/* ------------------------------------------------------------------ the client's PROXY header */

void tcp_handshake_read(struct worker *w, struct conn *c)
{
    struct direction *d = &c->dir[0];
    if (d->buf == NULL && tcp_buf_take(c->wv, d) < 0) {
        tcp_refuse(w, c, REFUSED_NO_RESOURCES);
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
            tcp_refuse(w, c, REFUSED_BAD_PROXY_HEADER);
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
                tcp_buf_give(c->wv, d);
            else
                CTR_ADD(c->wv->counters.buffered, d->held);
            timer_cancel(w, &c->timer);
            tcp_start_connect(w, c);
            return;
        }
    }
    tcp_refuse(w, c, REFUSED_BAD_PROXY_HEADER);
}
