/* udp_session.c: the UDP session table of a worker and VIP (hash buckets, LRU bound, idle timer, rebalance).
 *
 * The decisions are those of core/udp_session.py (the oracle): the table is bounded (the worker's share
 * of max_sessions, LRU eviction `evicted`), idle sessions expire (one timer per VIP and worker, on the
 * least recently used session), ECONNREFUSED excludes a backend and a stale session is moved to another
 * (rebalance), a backend an update removed makes its sessions stale. Worker side only.
 */
#define _GNU_SOURCE
#include "quic.h"
#include "udp.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "flowlog.h"

/* The flow key's 16-byte IP and the host-order port of a socket address. */
void udp_endpoint_of(const struct sockaddr_storage *ss, uint8_t ip16[16], uint16_t *port)
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

static double unit_draw(struct worker *w) { return (double)(worker_random(w) >> 11) * 0x1.0p-53; }

/* The scheduler's pick for `hash` (backend index in the worker's table), excluding the backends that
 * refused `s` (when given); when that leaves none, the pick among all (core.udp_session.pick_backend). */
int32_t udp_pick(struct worker *w, struct worker_vip *wv, uint32_t hash, const struct udp_session *s)
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

void udp_session_touch(struct worker *w, struct udp_wv *u, struct udp_session *s)
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
    udp_sock_retire(w, wv, s->sock, s);
    s->sock = NULL;
}

void udp_session_end(struct worker *w, struct worker_vip *wv, struct udp_session *s, enum closed_reason reason)
{
    struct udp_wv *u = wv->udp;
    flowlog_udp_ended(wv, s, reason);
    struct udp_session **p = &u->buckets[s->key & (u->n_buckets - 1)];
    while (*p != s)
        p = &(*p)->hnext;
    *p = s->hnext;
    lru_unlink(s);
    detach_backend(w, wv, s);
    u->n_sessions--;
    CTR_ADD(wv->counters.closed[reason], 1);
    histogram_observe(&wv->counters.flow_duration, flow_duration_bounds_us, w->now_us - s->created_us);
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
        udp_session_end(w, wv, u->lru.lnext, CLOSED_IDLE_TIMEOUT);
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
                                    socklen_t fromlen, const uint8_t ip16[16], uint16_t port, uint32_t key,
                                    const uint8_t *data, size_t len)
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
    uint32_t hash = sched_flow_hash(&t->sched, fkey);
    int32_t idx = -1;
    if (!t->udp_per_packet) {
        idx = udp_quic_pick(wv, data, len);
        if (idx < 0)
            idx = udp_pick(w, wv, hash, NULL);
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
        k = udp_sock_take(w, wv, idx, key, ip16, port);
    } else {
        int family = t->sched.n > 0 ? t->backends[0].addr.ss_family : wv->vip->family;
        k = udp_sock_take_unconnected(w, wv, family);
    }
    if (k == NULL) {
        CTR_ADD(wv->counters.refused[REFUSED_NO_RESOURCES], 1);
        return NULL;
    }
    while (u->n_sessions >= u->max_sessions && u->lru.lnext != &u->lru)
        udp_session_end(w, wv, u->lru.lnext, CLOSED_EVICTED);
    struct udp_session *s = u->free_sessions;
    if (s != NULL) {
        u->free_sessions = s->hnext;
    } else {
        s = malloc(sizeof(*s));
        if (s == NULL) {
            udp_sock_retire(w, wv, k, NULL);
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
    s->last_us = s->created_us = w->now_us;
    s->requests = s->replies = 0;
    s->bytes_in = s->bytes_out = 0;
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

struct udp_session *udp_session_of(struct worker *w, struct worker_vip *wv, const struct sockaddr_storage *from,
                                   socklen_t fromlen, const uint8_t *data, size_t len)
{
    struct udp_wv *u = wv->udp;
    uint8_t ip16[16];
    uint16_t port;
    udp_endpoint_of(from, ip16, &port);
    uint32_t key = key_of(u, ip16, port);
    struct udp_session *s = u->buckets[key & (u->n_buckets - 1)];
    while (s != NULL && (s->key != key || s->client_port != port || memcmp(s->client_ip16, ip16, 16) != 0))
        s = s->hnext;
    return s != NULL ? s : session_open(w, wv, from, fromlen, ip16, port, key, data, len);
}

/* QUIC (core.quic.ServerIds.route): only backends with weight > 0 are routed to. */
int32_t udp_quic_pick(struct worker_vip *wv, const uint8_t *data, size_t len)
{
    const struct eng_table *t = wv->table;
    if (t->udp_quic_bits == 0)
        return -1;
    int64_t id = quic_server_id(data, len, t->udp_quic_bits);
    if (id == QUIC_LONG_HEADER)
        return -1;
    for (uint32_t i = 0; id != QUIC_NOT_ROUTABLE && i < t->sched.n; i++) {
        if (t->backends[i].server_id == (uint64_t)id && t->weights[i] > 0) {
            CTR_ADD(wv->udp->counters.quic[QUIC_ROUTED], 1);
            return (int32_t)i;
        }
    }
    CTR_ADD(wv->udp->counters.quic[QUIC_FALLBACK], 1);
    return -1;
}

/* The backend refused the session (ICMP port unreachable): exclude it, rebalance on the next
 * datagram; its connect error is counted once per move (SessionRoute.backend_refused). */
void udp_on_refused(struct worker_vip *wv, struct udp_session *s)
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
int udp_rebalance(struct worker *w, struct worker_vip *wv, struct udp_session *s)
{
    int32_t idx = udp_pick(w, wv, s->flow_hash, s);
    if (idx < 0) {
        udp_session_end(w, wv, s, CLOSED_NO_BACKEND);
        return -1;
    }
    struct udp_sock *k = udp_sock_take(w, wv, idx, s->key, s->client_ip16, s->client_port);
    if (k == NULL) {
        udp_session_end(w, wv, s, CLOSED_NO_RESOURCES);
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

static void slot_index_build(struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    for (uint32_t i = 0; i < u->backend_slots; i++)
        u->slot_index[i] = -1;
    for (uint32_t i = 0; i < wv->table->sched.n; i++)
        u->slot_index[wv->table->backends[i].slot] = (int32_t)i;
}

/* CMD_VIP_UPDATE (the new table is in wv->table): its limits apply at once, a smaller table evicts, a
 * new idle timeout re-arms, the sessions of a removed backend are rebalanced on their next datagram. */
void udp_sessions_update(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    slot_index_build(wv);
    u->max_sessions = worker_share(w->eng, wv->table->udp_max_sessions);
    buckets_resize(u, u->max_sessions);
    while (u->n_sessions > u->max_sessions)
        udp_session_end(w, wv, u->lru.lnext, CLOSED_EVICTED);
    for (struct udp_session *s = u->lru.lnext; s != &u->lru;) {
        struct udp_session *next = s->lnext;
        if (s->slot >= 0 && u->slot_index[s->slot] < 0)
            s->stale = true; /* its backend was removed: rebalanced on its next datagram */
        s = next;
    }
    rearm_idle(w, wv);
}

unsigned long udp_sessions_close_backend(struct worker *w, struct worker_vip *wv, uint32_t slot, enum closed_reason r)
{
    struct udp_wv *u = wv->udp;
    unsigned long n = 0;
    for (struct udp_session *s = u->lru.lnext; s != &u->lru;) {
        struct udp_session *next = s->lnext;
        if (s->slot >= 0 && (uint32_t)s->slot == slot) {
            udp_session_end(w, wv, s, r);
            n++;
        }
        s = next;
    }
    return n;
}

int udp_sessions_attach(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    u->lru.lnext = u->lru.lprev = &u->lru;
    u->idle.fire = on_idle;
    u->seed = worker_random(w);
    slot_index_build(wv);
    u->max_sessions = worker_share(w->eng, wv->table->udp_max_sessions);
    return buckets_resize(u, u->max_sessions);
}

void udp_sessions_detach(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    while (u->lru.lnext != &u->lru)
        udp_session_end(w, wv, u->lru.lnext, CLOSED_SHUTDOWN);
    timer_cancel(w, &u->idle);
    while (u->free_sessions != NULL) {
        struct udp_session *s = u->free_sessions;
        u->free_sessions = s->hnext;
        free(s);
    }
    free(u->buckets);
    u->buckets = NULL;
}
