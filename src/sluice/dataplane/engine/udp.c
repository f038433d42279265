/* udp.c: the UDP full proxy on the workers (recvmmsg/sendmmsg, sessions, upstream sockets) and its control side.
 *
 * The decisions are those of dataplane/proxy/udp.py and core/udp_session.py (the oracle):
 * - a datagram from a new client address opens a session: the flow (client -> VIP, both ports 0 for
 *   `hash: source_ip`) is hashed, the scheduler picks, a connected upstream socket carries the
 *   session's datagrams; replies are sent from the listen socket (sendmmsg per upstream batch);
 * - the table is bounded (the worker's share of max_sessions, LRU eviction `evicted`), idle sessions
 *   expire (one timer per VIP and worker, on the least recently used session), `responses` ends a
 *   session once replies >= requests * responses;
 * - ECONNREFUSED (ICMP port unreachable) on a session's socket marks it stale and excludes the
 *   backend; the next datagram (or the one whose send was refused, once) is sent after a rebalance;
 *   a backend an update removed is rebalanced the same way;
 * - per_packet: one unconnected socket per session, every datagram picks its backend
 *   (per_packet_flow), replies only from current backends (`unknown_source`);
 * - sends that fail are dropped and counted by errno (EAGAIN/ENOBUFS `send_buffer_full`, EMSGSIZE
 *   `too_large`), never queued.
 */
#define _GNU_SOURCE
#include "udp.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* linux/udp.h: the control message carries the segment size as an int */
#endif

#define REASON_NAME(name, str) str,
const char *const dropped_names[DROPPED__COUNT] = {DROPPED_REASONS(REASON_NAME)};

#define CONTROL_SPACE (CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t)))

/* One worker's recvmmsg/sendmmsg buffers (udp_scratch). */
struct scratch {
    struct mmsghdr in[UDP_BATCH];
    struct iovec in_iov[UDP_BATCH];
    struct sockaddr_storage names[UDP_BATCH];
    uint8_t control[UDP_BATCH][CONTROL_SPACE];
    struct mmsghdr out[UDP_BATCH];
    struct iovec out_iov[UDP_BATCH];
    uint8_t *bufs; /* UDP_BATCH * UDP_BUFFER */
};

/* ------------------------------------------------------------------ small helpers */

static void count_drop(struct udp_wv *u, int err)
{
    switch (err) {
    case EAGAIN:
    case ENOBUFS:
        CTR_ADD(u->counters.dropped[DROPPED_SEND_BUFFER_FULL], 1);
        break;
    case EMSGSIZE:
        CTR_ADD(u->counters.dropped[DROPPED_TOO_LARGE], 1);
        break;
    case ECONNREFUSED:
        CTR_ADD(u->counters.dropped[DROPPED_BACKEND_REFUSED], 1);
        break;
    default:
        CTR_ADD(u->counters.dropped_errno[err > 0 && err < UDP_ERRNO_MAX ? err : EIO], 1);
        break;
    }
}

/* The flow key's 16-byte IP and the host-order port of a socket address. */
static void endpoint_of(const struct sockaddr_storage *ss, uint8_t ip16[16], uint16_t *port)
{
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        memcpy(ip16, &a->sin6_addr, 16);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        memset(ip16, 0, 10);
        ip16[10] = ip16[11] = 0xff;
        memcpy(ip16 + 12, &a->sin_addr, 4);
        *port = ntohs(a->sin_port);
    }
}

static uint32_t key_of(const struct udp_wv *u, const uint8_t ip16[16], uint16_t port)
{
    uint64_t a, b;
    memcpy(&a, ip16, 8);
    memcpy(&b, ip16 + 8, 8);
    uint64_t h = (a ^ u->seed) * 0x9E3779B97F4A7C15ULL;
    h ^= (b + port) * 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 31;
    h *= 0x94D049BB133111EBULL;
    h ^= h >> 29;
    return (uint32_t)h;
}

static bool same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
    }
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
}

static double unit_draw(struct worker *w) { return (double)(worker_random(w) >> 11) * 0x1.0p-53; }

/* The scheduler's pick for `hash` (backend index in the worker's table), excluding the backends that
 * refused `s` (when given); when that leaves none, the pick among all (core.udp_session.pick_backend). */
static int32_t pick(struct worker *w, struct worker_vip *wv, uint32_t hash, const struct udp_session *s)
{
    struct eng_table *t = wv->table;
    struct udp_wv *u = wv->udp;
    uint32_t n = t->sched.n, excl[UDP_EXCLUDE_MAX];
    size_t ne = 0;
    if (s != NULL) {
        for (uint8_t i = 0; i < s->n_excluded; i++) {
            int32_t idx = u->slot_index[s->excluded[i]];
            if (idx >= 0)
                excl[ne++] = (uint32_t)idx;
        }
    }
    const int64_t *active = NULL;
    double r1 = 0, r2 = 0;
    if (t->sched.kind == SCHED_LEAST_CONN || t->sched.kind == SCHED_RANDOM_TWO) {
        for (uint32_t i = 0; i < n; i++)
            wv->active_scratch[i] = wv->sched_active[t->backends[i].slot];
        active = wv->active_scratch;
    }
    if (t->sched.kind == SCHED_RANDOM_TWO) {
        r1 = unit_draw(w);
        r2 = unit_draw(w);
    }
    int64_t *rr = t->rr_current + (size_t)w->index * n;
    int32_t idx = sched_pick(&t->sched, hash, excl, ne, rr, active, r1, r2);
    if (idx < 0 && ne > 0)
        idx = sched_pick(&t->sched, hash, NULL, 0, rr, active, r1, r2);
    return idx;
}

/* ------------------------------------------------------------------ upstream sockets */

static void held_unlink(struct udp_wv *u, struct udp_sock *k)
{
    k->hprev->hnext = k->hnext;
    k->hnext->hprev = k->hprev;
    k->hprev = k->hnext = NULL;
    u->n_held--;
    if (k->slot >= 0) {
        struct slot_list *l = &u->slot_held[k->slot];
        if (k->sprev != NULL)
            k->sprev->snext = k->snext;
        else
            l->head = k->snext;
        if (k->snext != NULL)
            k->snext->sprev = k->sprev;
        else
            l->tail = k->sprev;
        k->sprev = k->snext = NULL;
    }
}

static void sock_close(struct udp_wv *u, struct udp_sock *k)
{
    if (k->hnext != NULL)
        held_unlink(u, k);
    close(k->fd); /* leaves the epoll set with it */
    u->socks[k->index] = NULL;
    u->free_index[u->n_free_index++] = k->index;
    free(k);
}

/* A new non-blocking socket of `family`, connected to `to` (NULL: unconnected), in epoll. */
static struct udp_sock *sock_new(struct worker *w, struct worker_vip *wv, int family, const struct eng_backend *to)
{
    struct udp_wv *u = wv->udp;
    if (u->n_free_index == 0) {
        uint32_t cap = u->cap_socks ? u->cap_socks * 2 : 256;
        struct udp_sock **socks = realloc(u->socks, sizeof(*socks) * cap);
        if (socks == NULL)
            return NULL;
        u->socks = socks;
        uint32_t *free_index = realloc(u->free_index, sizeof(*free_index) * cap);
        if (free_index == NULL)
            return NULL;
        u->free_index = free_index;
        for (uint32_t i = cap; i > u->cap_socks; i--) {
            socks[i - 1] = NULL;
            free_index[u->n_free_index++] = i - 1;
        }
        u->cap_socks = cap;
    }
    struct udp_sock *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    k->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (k->fd < 0)
        goto fail;
    if (to != NULL && connect(k->fd, (const struct sockaddr *)&to->addr, to->addrlen) < 0)
        goto fail;
    k->index = u->free_index[u->n_free_index - 1];
    if (epoll_add(w, k->fd, EPOLLIN, H_UDP_UP, wv->vip->id, k->index) < 0)
        goto fail;
    u->n_free_index--;
    u->socks[k->index] = k;
    k->family = family;
    k->slot = to != NULL ? (int32_t)to->slot : -1;
    if (k->index >= u->n_socks)
        u->n_socks = k->index + 1;
    return k;
fail:
    if (k->fd >= 0)
        close(k->fd);
    free(k);
    return NULL;
}

/* An upstream socket connected to backend `idx` of the worker's table: a held one of that backend
 * past its quarantine, else the oldest held one past it (connected anew), else a new one. */
static struct udp_sock *sock_take(struct worker *w, struct worker_vip *wv, int32_t idx)
{
    struct udp_wv *u = wv->udp;
    const struct eng_backend *b = &wv->table->backends[idx];
    struct udp_sock *k = u->slot_held[b->slot].head;
    if (k != NULL && k->release_us <= w->now_us) {
        held_unlink(u, k);
        return k;
    }
    k = u->held.hnext;
    if (k != &u->held && k->release_us <= w->now_us && k->family == b->addr.ss_family) {
        held_unlink(u, k);
        if (connect(k->fd, (const struct sockaddr *)&b->addr, b->addrlen) == 0) {
            k->slot = (int32_t)b->slot;
            return k;
        }
        sock_close(u, k);
    }
    return sock_new(w, wv, b->addr.ss_family, b);
}

/* Hold a closed session's socket: quarantined, then reusable; the oldest closed beyond held_max. */
static void sock_retire(struct worker *w, struct worker_vip *wv, struct udp_sock *k)
{
    struct udp_wv *u = wv->udp;
    k->session = NULL;
    k->release_us = w->now_us + wv->vip->quarantine_us;
    k->hnext = &u->held;
    k->hprev = u->held.hprev;
    u->held.hprev->hnext = k;
    u->held.hprev = k;
    u->n_held++;
    if (k->slot >= 0) {
        struct slot_list *l = &u->slot_held[k->slot];
        k->sprev = l->tail;
        k->snext = NULL;
        if (l->tail != NULL)
            l->tail->snext = k;
        else
            l->head = k;
        l->tail = k;
    }
    while (u->n_held > wv->vip->held_max)
        sock_close(u, u->held.hnext);
}

/* ------------------------------------------------------------------ sessions */

static void lru_unlink(struct udp_session *s)
{
    s->lprev->lnext = s->lnext;
    s->lnext->lprev = s->lprev;
}

static void lru_append(struct udp_wv *u, struct udp_session *s)
{
    s->lnext = &u->lru;
    s->lprev = u->lru.lprev;
    u->lru.lprev->lnext = s;
    u->lru.lprev = s;
}

static void touch(struct worker *w, struct udp_wv *u, struct udp_session *s)
{
    s->last_us = w->now_us;
    if (u->lru.lprev != s) {
        lru_unlink(s);
        lru_append(u, s);
    }
}

static void gauges(struct worker_vip *wv)
{
    CTR_SET(wv->counters.active, (int64_t)wv->udp->n_sessions);
    CTR_SET(wv->udp->counters.sessions, (int64_t)wv->udp->n_sessions);
}

static void attach_backend(struct worker_vip *wv, struct udp_session *s, struct udp_sock *k)
{
    s->sock = k;
    k->session = s;
    s->slot = k->slot;
    if (s->slot >= 0) {
        struct backend_counters *b = &wv->counters.backends[s->slot];
        CTR_ADD(b->active, 1);
        CTR_ADD(b->flows_total, 1);
        wv->sched_active[s->slot]++;
    }
}

static void detach_backend(struct worker *w, struct worker_vip *wv, struct udp_session *s)
{
    if (s->slot >= 0) {
        CTR_ADD(wv->counters.backends[s->slot].active, -1);
        wv->sched_active[s->slot]--;
    }
    sock_retire(w, wv, s->sock);
    s->sock = NULL;
}

static void session_end(struct worker *w, struct worker_vip *wv, struct udp_session *s, enum closed_reason reason)
{
    struct udp_wv *u = wv->udp;
    struct udp_session **p = &u->buckets[s->key & (u->n_buckets - 1)];
    while (*p != s)
        p = &(*p)->hnext;
    *p = s->hnext;
    lru_unlink(s);
    detach_backend(w, wv, s);
    u->n_sessions--;
    CTR_ADD(wv->counters.closed[reason], 1);
    if (reason == CLOSED_EVICTED)
        CTR_ADD(u->counters.evictions, 1);
    gauges(wv);
    s->hnext = u->free_sessions;
    u->free_sessions = s;
}

static void on_idle(struct worker *w, struct timer *t)
{
    struct udp_wv *u = (struct udp_wv *)((char *)t - offsetof(struct udp_wv, idle));
    struct worker_vip *wv = u->wv;
    uint64_t idle = wv->table->idle_timeout_us;
    while (u->lru.lnext != &u->lru && u->lru.lnext->last_us + idle <= w->now_us)
        session_end(w, wv, u->lru.lnext, CLOSED_IDLE_TIMEOUT);
    if (u->lru.lnext != &u->lru)
        timer_arm(w, &u->idle, u->lru.lnext->last_us + idle);
}

static void rearm_idle(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    if (u->lru.lnext == &u->lru)
        timer_cancel(w, &u->idle);
    else
        timer_arm(w, &u->idle, u->lru.lnext->last_us + wv->table->idle_timeout_us);
}

static int buckets_resize(struct udp_wv *u, uint32_t want)
{
    uint32_t n = 256;
    while (n < want && n < (1u << 30))
        n <<= 1;
    if (u->buckets != NULL && n <= u->n_buckets)
        return 0;
    struct udp_session **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return u->buckets != NULL ? 0 : -ENOMEM; /* longer chains, still correct */
    for (struct udp_session *s = u->lru.lnext; s != &u->lru; s = s->lnext) {
        s->hnext = b[s->key & (n - 1)];
        b[s->key & (n - 1)] = s;
    }
    free(u->buckets);
    u->buckets = b;
    u->n_buckets = n;
    return 0;
}

static uint32_t worker_share(const struct engine *e, uint32_t max_sessions)
{
    uint32_t share = max_sessions / e->n_workers;
    return share ? share : 1;
}

/* The session of a new client, or NULL (refused and counted). */
static struct udp_session *session_open(struct worker *w, struct worker_vip *wv, const struct sockaddr_storage *from,
                                        socklen_t fromlen, const uint8_t ip16[16], uint16_t port, uint32_t key)
{
    struct udp_wv *u = wv->udp;
    struct eng_table *t = wv->table;
    if (!u->accepting) {
        CTR_ADD(wv->counters.refused[REFUSED_SHUTTING_DOWN], 1);
        return NULL;
    }
    uint8_t fkey[FLOW_KEY_LEN];
    if (t->udp_source_ip)
        flow_key_build(fkey, ip16, u->vip_ip16, 0, 0, IPPROTO_UDP);
    else
        flow_key_build(fkey, ip16, u->vip_ip16, port, u->vip_port, IPPROTO_UDP);
    uint32_t hash = flow_hash(fkey);
    int32_t idx = -1;
    if (!t->udp_per_packet) {
        idx = pick(w, wv, hash, NULL);
        if (idx < 0) {
            CTR_ADD(wv->counters.refused[REFUSED_NO_BACKEND], 1);
            return NULL;
        }
    }
    uint8_t header[UDP_HEADER_MAX];
    int header_len = 0;
    if (t->proxy_out == 2) {
        struct proxy_addrs a = {.family = from->ss_family == AF_INET6 ? 6 : 4};
        if (a.family == 6) {
            const struct sockaddr_in6 *c6 = (const struct sockaddr_in6 *)from;
            if (c6->sin6_scope_id != 0) { /* core.proxy_protocol refuses a scoped address */
                CTR_ADD(wv->counters.refused[REFUSED_PROXY_HEADER], 1);
                return NULL;
            }
            memcpy(a.src, ip16, 16);
        } else {
            memcpy(a.src, ip16 + 12, 4);
        }
        memcpy(a.dst, wv->vip->local_addrs.dst, 16);
        a.src_port = port;
        a.dst_port = u->vip_port;
        header_len = proxy_header_build(header, sizeof(header), 2, 1, &a);
        if (header_len < 0) {
            CTR_ADD(wv->counters.refused[REFUSED_PROXY_HEADER], 1);
            return NULL;
        }
    }
    struct udp_sock *k;
    if (idx >= 0) {
        k = sock_take(w, wv, idx);
    } else {
        int family = t->sched.n > 0 ? t->backends[0].addr.ss_family : wv->vip->family;
        k = sock_new(w, wv, family, NULL);
    }
    if (k == NULL) {
        CTR_ADD(wv->counters.refused[REFUSED_NO_RESOURCES], 1);
        return NULL;
    }
    while (u->n_sessions >= u->max_sessions && u->lru.lnext != &u->lru)
        session_end(w, wv, u->lru.lnext, CLOSED_EVICTED);
    struct udp_session *s = u->free_sessions;
    if (s != NULL) {
        u->free_sessions = s->hnext;
    } else {
        s = malloc(sizeof(*s));
        if (s == NULL) {
            sock_retire(w, wv, k);
            CTR_ADD(wv->counters.refused[REFUSED_NO_RESOURCES], 1);
            return NULL;
        }
    }
    memcpy(&s->client, from, fromlen);
    s->client_len = fromlen;
    s->key = key;
    memcpy(s->client_ip16, ip16, 16);
    s->client_port = port;
    s->flow_hash = hash;
    s->n_excluded = 0;
    s->stale = false;
    s->last_us = w->now_us;
    s->requests = s->replies = 0;
    memcpy(s->header, header, (size_t)header_len);
    s->header_len = (uint8_t)header_len;
    struct udp_session **bucket = &u->buckets[key & (u->n_buckets - 1)];
    s->hnext = *bucket;
    *bucket = s;
    lru_append(u, s);
    u->n_sessions++;
    attach_backend(wv, s, k);
    CTR_ADD(wv->counters.flows_total, 1);
    gauges(wv);
    if (u->idle.next == NULL)
        timer_arm(w, &u->idle, w->now_us + t->idle_timeout_us);
    return s;
}

/* The backend refused the session (ICMP port unreachable): exclude it, rebalance on the next
 * datagram; its connect error is counted once per move (SessionRoute.backend_refused). */
static void on_refused(struct worker_vip *wv, struct udp_session *s)
{
    bool first = !s->stale;
    s->stale = true;
    bool known = false;
    for (uint8_t i = 0; i < s->n_excluded; i++)
        known |= s->excluded[i] == (uint32_t)s->slot;
    if (!known && s->n_excluded < UDP_EXCLUDE_MAX)
        s->excluded[s->n_excluded++] = (uint32_t)s->slot;
    if (first)
        CTR_ADD(wv->counters.backends[s->slot].connect_errors[CONNECT_ERROR_REFUSED], 1);
}

/* Move a stale session (core.udp_session.rebalance); -1 when it had to end (then `s` is gone). */
static int rebalance(struct worker *w, struct worker_vip *wv, struct udp_session *s)
{
    int32_t idx = pick(w, wv, s->flow_hash, s);
    if (idx < 0) {
        session_end(w, wv, s, CLOSED_NO_BACKEND);
        return -1;
    }
    struct udp_sock *k = sock_take(w, wv, idx);
    if (k == NULL) {
        session_end(w, wv, s, CLOSED_NO_RESOURCES);
        return -1;
    }
    int32_t old = s->slot;
    detach_backend(w, wv, s);
    attach_backend(wv, s, k);
    if (s->slot != old)
        CTR_ADD(wv->udp->counters.rebalanced, 1);
    s->stale = false;
    return 0;
}

/* Send on the session's connected socket: 0 (sent or dropped and counted), -ECONNREFUSED. */
static int send_up(struct worker_vip *wv, struct udp_session *s, const uint8_t *data, size_t len)
{
    struct udp_wv *u = wv->udp;
    ssize_t n;
    if (s->header_len) {
        struct iovec iov[2] = {{s->header, s->header_len}, {(void *)data, len}};
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
        n = sendmsg(s->sock->fd, &m, MSG_DONTWAIT);
    } else {
        n = send(s->sock->fd, data, len, MSG_DONTWAIT);
    }
    if (n < 0) {
        if (errno == ECONNREFUSED) {
            on_refused(wv, s);
            return -ECONNREFUSED;
        }
        count_drop(u, errno);
        return 0;
    }
    CTR_ADD(u->counters.datagrams_to[s->slot], 1);
    CTR_ADD(wv->counters.backends[s->slot].bytes_to_backend, len);
    return 0;
}

static void send_per_packet(struct worker *w, struct worker_vip *wv, struct udp_session *s, const uint8_t *data,
                            size_t len)
{
    struct udp_wv *u = wv->udp;
    u->seq = (u->seq + 1) & 0xffff;
    uint8_t fkey[FLOW_KEY_LEN];
    flow_key_build(fkey, s->client_ip16, u->vip_ip16, (uint16_t)u->seq, u->vip_port, IPPROTO_UDP);
    int32_t idx = pick(w, wv, flow_hash(fkey), NULL);
    if (idx < 0) {
        CTR_ADD(u->counters.dropped[DROPPED_NO_BACKEND], 1);
        return;
    }
    const struct eng_backend *b = &wv->table->backends[idx];
    struct iovec iov[2] = {{s->header, s->header_len}, {(void *)data, len}};
    struct msghdr m = {.msg_name = (void *)&b->addr, .msg_namelen = b->addrlen};
    m.msg_iov = s->header_len ? iov : iov + 1;
    m.msg_iovlen = s->header_len ? 2 : 1;
    if (sendmsg(s->sock->fd, &m, MSG_DONTWAIT) < 0) {
        count_drop(u, errno);
        return;
    }
    struct backend_counters *bc = &wv->counters.backends[b->slot];
    CTR_ADD(bc->flows_total, 1);
    CTR_ADD(u->counters.datagrams_to[b->slot], 1);
    CTR_ADD(bc->bytes_to_backend, len);
}

static void on_client_datagram(struct worker *w, struct worker_vip *wv, const struct sockaddr_storage *from,
                               socklen_t fromlen, const uint8_t *data, size_t len)
{
    struct udp_wv *u = wv->udp;
    uint8_t ip16[16];
    uint16_t port;
    endpoint_of(from, ip16, &port);
    uint32_t key = key_of(u, ip16, port);
    struct udp_session *s = u->buckets[key & (u->n_buckets - 1)];
    while (s != NULL && (s->key != key || s->client_port != port || memcmp(s->client_ip16, ip16, 16) != 0))
        s = s->hnext;
    if (s == NULL) {
        s = session_open(w, wv, from, fromlen, ip16, port, key);
        if (s == NULL)
            return;
    }
    s->requests++;
    touch(w, u, s);
    if (s->slot < 0) {
        send_per_packet(w, wv, s, data, len);
        return;
    }
    if (s->stale && rebalance(w, wv, s) < 0) {
        CTR_ADD(u->counters.dropped[DROPPED_NO_BACKEND], 1);
        return;
    }
    if (send_up(wv, s, data, len) == -ECONNREFUSED) {
        if (rebalance(w, wv, s) < 0 || send_up(wv, s, data, len) == -ECONNREFUSED)
            CTR_ADD(u->counters.dropped[DROPPED_BACKEND_REFUSED], 1);
    }
}

/* ------------------------------------------------------------------ events */

static struct scratch *scratch_of(struct worker *w) { return w->udp_scratch; }

static void prepare_in(struct scratch *sc, bool control)
{
    for (int i = 0; i < UDP_BATCH; i++) {
        sc->in_iov[i].iov_base = sc->bufs + (size_t)i * UDP_BUFFER;
        sc->in_iov[i].iov_len = UDP_BUFFER;
        struct msghdr *m = &sc->in[i].msg_hdr;
        m->msg_name = &sc->names[i];
        m->msg_namelen = sizeof(sc->names[i]);
        m->msg_iov = &sc->in_iov[i];
        m->msg_iovlen = 1;
        m->msg_control = control ? sc->control[i] : NULL;
        m->msg_controllen = control ? CONTROL_SPACE : 0;
        m->msg_flags = 0;
    }
}

static void on_listen(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    struct scratch *sc = scratch_of(w);
    for (int round = 0; round < UDP_LISTEN_ROUNDS && u->listen_fd >= 0; round++) {
        prepare_in(sc, true);
        int n = recvmmsg(u->listen_fd, sc->in, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                count_drop(u, errno);
            return;
        }
        for (int i = 0; i < n; i++) {
            struct msghdr *m = &sc->in[i].msg_hdr;
            size_t len = sc->in[i].msg_len;
            int segment = 0;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm != NULL; cm = CMSG_NXTHDR(m, cm)) {
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                    memcpy(&segment, CMSG_DATA(cm), sizeof(segment));
                } else if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_RXQ_OVFL) {
                    uint32_t drops;
                    memcpy(&drops, CMSG_DATA(cm), sizeof(drops));
                    CTR_SET(u->counters.dropped[DROPPED_KERNEL_OVERFLOW], drops); /* the socket's total */
                }
            }
            if (m->msg_flags & MSG_TRUNC) {
                CTR_ADD(u->counters.dropped[DROPPED_TRUNCATED], 1);
                continue;
            }
            const uint8_t *data = sc->in_iov[i].iov_base;
            if (segment > 0 && (size_t)segment < len) {
                for (size_t at = 0; at < len; at += (size_t)segment) {
                    size_t part = len - at < (size_t)segment ? len - at : (size_t)segment;
                    on_client_datagram(w, wv, &sc->names[i], m->msg_namelen, data + at, part);
                }
            } else {
                on_client_datagram(w, wv, &sc->names[i], m->msg_namelen, data, len);
            }
        }
        if (n < UDP_BATCH)
            return;
    }
}

/* Index of the current backend whose address is `from`, or -1. */
static int32_t backend_of(const struct eng_table *t, const struct sockaddr_storage *from)
{
    for (uint32_t i = 0; i < t->sched.n; i++)
        if (same_sockaddr(&t->backends[i].addr, from))
            return (int32_t)i;
    return -1;
}

static void on_upstream(struct worker *w, struct worker_vip *wv, struct udp_sock *k)
{
    struct udp_wv *u = wv->udp;
    struct scratch *sc = scratch_of(w);
    prepare_in(sc, false);
    int n = recvmmsg(k->fd, sc->in, UDP_BATCH, MSG_DONTWAIT, NULL);
    struct udp_session *s = k->session;
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR || s == NULL)
            return;
        if (errno == ECONNREFUSED && s->slot >= 0)
            on_refused(wv, s);
        else
            count_drop(u, errno);
        return;
    }
    if (s == NULL || u->listen_fd < 0)
        return; /* held (quarantine): late replies reach nobody */
    uint32_t limit = wv->table->udp_responses;
    int queued = 0;
    for (int i = 0; i < n; i++) {
        int32_t slot = s->slot;
        if (slot < 0) {
            int32_t idx = backend_of(wv->table, &sc->names[i]);
            if (idx < 0) {
                CTR_ADD(u->counters.dropped[DROPPED_UNKNOWN_SOURCE], 1);
                continue;
            }
            slot = (int32_t)wv->table->backends[idx].slot;
        }
        size_t len = sc->in[i].msg_len;
        CTR_ADD(u->counters.datagrams_from[slot], 1);
        CTR_ADD(wv->counters.backends[slot].bytes_from_backend, len);
        struct msghdr *m = &sc->out[queued].msg_hdr;
        memset(m, 0, sizeof(*m));
        sc->out_iov[queued].iov_base = sc->in_iov[i].iov_base;
        sc->out_iov[queued].iov_len = len;
        m->msg_name = &s->client;
        m->msg_namelen = s->client_len;
        m->msg_iov = &sc->out_iov[queued];
        m->msg_iovlen = 1;
        queued++;
        if (limit && s->replies + (uint64_t)queued >= s->requests * limit)
            break; /* the last reply expected: the rest reach nobody, as in udp.py */
    }
    for (int done = 0; done < queued;) {
        int sent = sendmmsg(u->listen_fd, sc->out + done, (unsigned)(queued - done), MSG_DONTWAIT);
        if (sent < 0) {
            count_drop(u, errno);
            done++;
            continue;
        }
        s->replies += (uint64_t)sent;
        done += sent;
    }
    if (queued == 0)
        return;
    touch(w, u, s);
    if (limit && s->replies >= s->requests * limit)
        session_end(w, wv, s, CLOSED_RESPONSES);
}

void udp_on_event(struct worker *w, enum handle_kind kind, uint32_t vip_id, uint32_t index)
{
    if (vip_id >= w->eng->max_vips || w->vips[vip_id] == NULL || w->vips[vip_id]->udp == NULL)
        return;
    struct worker_vip *wv = w->vips[vip_id];
    if (kind == H_UDP_LISTEN) {
        on_listen(w, wv);
        return;
    }
    struct udp_wv *u = wv->udp;
    if (index < u->cap_socks && u->socks[index] != NULL)
        on_upstream(w, wv, u->socks[index]);
}

/* ------------------------------------------------------------------ commands, worker side */

static void slot_index_build(struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    for (uint32_t i = 0; i < u->backend_slots; i++)
        u->slot_index[i] = -1;
    for (uint32_t i = 0; i < wv->table->sched.n; i++)
        u->slot_index[wv->table->backends[i].slot] = (int32_t)i;
}

/* The table's limits, at once: a smaller table evicts, a new idle timeout re-arms. */
static void apply_limits(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    u->max_sessions = worker_share(w->eng, wv->table->udp_max_sessions);
    buckets_resize(u, u->max_sessions);
    while (u->n_sessions > u->max_sessions)
        session_end(w, wv, u->lru.lnext, CLOSED_EVICTED);
    for (struct udp_session *s = u->lru.lnext; s != &u->lru;) {
        struct udp_session *next = s->lnext;
        if (s->slot >= 0 && u->slot_index[s->slot] < 0)
            s->stale = true; /* its backend was removed: rebalanced on its next datagram */
        s = next;
    }
    rearm_idle(w, wv);
}

static void attach(struct worker *w, struct worker_vip *wv)
{
    struct vip *v = wv->vip;
    struct udp_wv *u = wv->udp;
    wv->w = w;
    u->wv = wv;
    table_ref(v->table);
    wv->table = v->table;
    u->lru.lnext = u->lru.lprev = &u->lru;
    u->held.hnext = u->held.hprev = &u->held;
    u->idle.fire = on_idle;
    u->seed = worker_random(w);
    u->accepting = true;
    uint8_t ip[16];
    (void)ip;
    endpoint_of(&v->local, u->vip_ip16, &u->vip_port);
    u->listen_fd = v->listen_fds[w->index];
    v->listen_fds[w->index] = -1; /* the worker owns it now */
    w->vips[v->id] = wv;
    if (w->udp_scratch == NULL) {
        struct scratch *sc = calloc(1, sizeof(*sc));
        if (sc != NULL && (sc->bufs = malloc((size_t)UDP_BATCH * UDP_BUFFER)) == NULL) {
            free(sc);
            sc = NULL;
        }
        w->udp_scratch = sc;
    }
    slot_index_build(wv);
    u->max_sessions = worker_share(w->eng, wv->table->udp_max_sessions);
    if (w->udp_scratch == NULL || buckets_resize(u, u->max_sessions) < 0 ||
        epoll_add(w, u->listen_fd, EPOLLIN, H_UDP_LISTEN, v->id, 0) < 0) {
        close(u->listen_fd); /* short of memory: this worker serves no datagram of the VIP */
        u->listen_fd = -1;
    }
}

static void detach(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    while (u->lru.lnext != &u->lru)
        session_end(w, wv, u->lru.lnext, CLOSED_SHUTDOWN);
    timer_cancel(w, &u->idle);
    if (u->listen_fd >= 0)
        close(u->listen_fd);
    u->listen_fd = -1;
    while (u->held.hnext != &u->held)
        sock_close(u, u->held.hnext);
    while (u->free_sessions != NULL) {
        struct udp_session *s = u->free_sessions;
        u->free_sessions = s->hnext;
        free(s);
    }
    free(u->buckets);
    u->buckets = NULL;
    free(u->socks);
    u->socks = NULL;
    free(u->free_index);
    u->free_index = NULL;
    u->cap_socks = u->n_socks = u->n_free_index = 0;
    w->vips[wv->vip->id] = NULL;
    table_unref(wv->table);
    wv->table = NULL;
}

static void list_held(struct worker *w, struct worker_vip *wv, struct command *cmd)
{
    struct udp_wv *u = wv->udp;
    pthread_mutex_lock(cmd->held_lock);
    for (struct udp_sock *k = u->held.hnext; k != &u->held; k = k->hnext) {
        unsigned long at = atomic_fetch_add(&cmd->result, 1);
        if (at < cmd->fds_cap) {
            cmd->fds[at] = k->fd;
            cmd->fd_quarantined[at] = k->release_us > w->now_us;
        }
    }
    pthread_mutex_unlock(cmd->held_lock);
}

void udp_command(struct worker *w, struct worker_vip *wv, struct command *cmd)
{
    struct udp_wv *u = wv->udp;
    switch (cmd->kind) {
    case CMD_VIP_ADD:
        attach(w, wv);
        break;
    case CMD_VIP_UPDATE: {
        table_ref(cmd->table);
        struct eng_table *old = wv->table;
        wv->table = cmd->table;
        table_unref(old);
        slot_index_build(wv);
        apply_limits(w, wv);
        break;
    }
    case CMD_STOP_ACCEPTING:
        u->accepting = false; /* datagrams of existing sessions still flow */
        break;
    case CMD_CLOSE_BACKEND_FLOWS: {
        unsigned long n = 0;
        for (struct udp_session *s = u->lru.lnext; s != &u->lru;) {
            struct udp_session *next = s->lnext;
            if (s->slot >= 0 && (uint32_t)s->slot == cmd->slot) {
                session_end(w, wv, s, cmd->reason);
                n++;
            }
            s = next;
        }
        atomic_fetch_add(&cmd->result, n);
        break;
    }
    case CMD_VIP_REMOVE:
        detach(w, wv);
        break;
    case CMD_UDP_HELD:
        list_held(w, wv, cmd);
        break;
    case CMD_SHUTDOWN:
        break;
    }
}

void udp_worker_free(struct worker *w)
{
    struct scratch *sc = w->udp_scratch;
    if (sc != NULL)
        free(sc->bufs);
    free(sc);
    w->udp_scratch = NULL;
}

/* ------------------------------------------------------------------ control side */

int udp_wv_new(struct worker_vip *wv, uint32_t backend_slots)
{
    struct udp_wv *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return -ENOMEM;
    wv->udp = u;
    u->listen_fd = -1;
    u->backend_slots = backend_slots;
    u->counters.datagrams_to = calloc(backend_slots, sizeof(uint64_t));
    u->counters.datagrams_from = calloc(backend_slots, sizeof(uint64_t));
    u->slot_held = calloc(backend_slots, sizeof(*u->slot_held));
    u->slot_index = calloc(backend_slots, sizeof(*u->slot_index));
    if (!u->counters.datagrams_to || !u->counters.datagrams_from || !u->slot_held || !u->slot_index)
        return -ENOMEM; /* udp_wv_free releases what was made */
    return 0;
}

void udp_wv_free(struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    if (u == NULL)
        return;
    free(u->counters.datagrams_to);
    free(u->counters.datagrams_from);
    free(u->slot_held);
    free(u->slot_index);
    free(u->buckets);
    free(u->socks);
    free(u->free_index);
    free(u);
    wv->udp = NULL;
}

int udp_bind_listener(struct vip *v, unsigned index, int *fd_out)
{
    int fd = socket(v->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    *fd_out = fd; /* closed by the caller's cleanup on failure */
    int one = 1, rcvbuf = (int)(v->receive_buffer ? v->receive_buffer : UDP_RCVBUF_DEFAULT);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one)) < 0)
        return -errno;
    if (v->family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
        return -errno;
    if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0)
        v->gro = false; /* a kernel without UDP_GRO: datagrams come one by one */
    if (bind(fd, (struct sockaddr *)&v->local, v->local_len) < 0)
        return -errno;
    if (index == 0) { /* port 0: the others bind the port the kernel gave the first */
        socklen_t len = sizeof(v->local);
        if (getsockname(fd, (struct sockaddr *)&v->local, &len) < 0)
            return -errno;
        v->local_len = len;
    }
    return 0;
}

int engine_udp_counters(struct engine *e, uint32_t id, int worker, struct udp_counters *out)
{
    int err = -ENOENT;
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL && v->udp) {
        err = 0;
        uint64_t *to = out->datagrams_to, *from = out->datagrams_from;
        memset(out, 0, sizeof(*out));
        memset(to, 0, sizeof(*to) * v->backend_slots);
        memset(from, 0, sizeof(*from) * v->backend_slots);
        out->datagrams_to = to;
        out->datagrams_from = from;
        for (unsigned i = 0; i < e->n_workers; i++) {
            if (worker >= 0 && (unsigned)worker != i)
                continue;
            const struct udp_counters *c = &v->per_worker[i].udp->counters;
            out->sessions += CTR_LOAD(c->sessions);
            out->evictions += CTR_LOAD(c->evictions);
            out->rebalanced += CTR_LOAD(c->rebalanced);
            for (int r = 0; r < DROPPED__COUNT; r++)
                out->dropped[r] += CTR_LOAD(c->dropped[r]);
            for (int r = 0; r < UDP_ERRNO_MAX; r++)
                out->dropped_errno[r] += CTR_LOAD(c->dropped_errno[r]);
            for (uint32_t s = 0; s < v->backend_slots; s++) {
                to[s] += CTR_LOAD(c->datagrams_to[s]);
                from[s] += CTR_LOAD(c->datagrams_from[s]);
            }
        }
    }
    pthread_mutex_unlock(&e->control);
    return err;
}

int engine_udp_held(struct engine *e, uint32_t id, int *fds, uint8_t *quarantined, uint32_t cap)
{
    int err = -ENOENT;
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL && v->udp && v->per_worker[0].w != NULL) {
        struct command cmd = {
            .kind = CMD_UDP_HELD, .vip = v, .fds = fds, .fd_quarantined = quarantined, .fds_cap = cap,
            .held_lock = &lock};
        atomic_init(&cmd.result, 0);
        engine_command(e, &cmd);
        err = (int)atomic_load(&cmd.result);
    }
    pthread_mutex_unlock(&e->control);
    pthread_mutex_destroy(&lock);
    return err;
}
