/* flowlog.c: flow log records of ended flows, worker -> bounded ring -> control thread (flowlog.h). */
#include "flowlog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "udp.h"

_Static_assert((FLOWLOG_RING & (FLOWLOG_RING - 1)) == 0, "FLOWLOG_RING must be a power of two");

/* The ring of `wv` when its flow log is on, else NULL. */
static struct flow_ring *ring_on(struct worker_vip *wv)
{
    struct flow_ring *r = atomic_load_explicit(&wv->flowlog, memory_order_acquire);
    return r != NULL && atomic_load_explicit(&r->on, memory_order_relaxed) ? r : NULL;
}

static void push(struct flow_ring *r, const struct flow_record *rec)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail >= FLOWLOG_RING) {
        CTR_ADD(r->dropped, 1);
        return;
    }
    r->slots[head & (FLOWLOG_RING - 1)] = *rec;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
}

void flowlog_push(struct worker_vip *wv, const struct flow_record *rec)
{
    struct flow_ring *r = ring_on(wv);
    if (r != NULL)
        push(r, rec);
}

static uint64_t since(uint64_t now, uint64_t then) { return now > then ? now - then : 0; }

void flowlog_tcp_closed(struct conn *c, enum closed_reason reason)
{
    struct worker_vip *wv = c->wv;
    struct flow_ring *r = ring_on(wv);
    if (r == NULL)
        return;
    /* the client as tcp.py logs it: the PROXY header's source when there was one with addresses */
    const struct proxy_addrs *client = c->flow_known && c->flow.family != 0 ? &c->flow : &c->real;
    struct flow_record rec = {
        .start_us = c->accepted_us,
        .duration_us = since(wv->w->now_us, c->accepted_us),
        .bytes_to_backend = c->moved[0],
        .bytes_from_backend = c->moved[1],
        .client_port = client->src_port,
        .listen_port = c->real.dst_port,
        .slot = (int32_t)c->slot,
        .client_family = (uint8_t)client->family,
        .listen_family = (uint8_t)c->real.family,
        .reason = (uint8_t)reason,
        .retries = c->n_tried > 0 ? (uint8_t)(c->n_tried - 1) : 0,
    };
    memcpy(rec.client, client->src, 16);
    memcpy(rec.listen, c->real.dst, 16);
    push(r, &rec);
}

void flowlog_udp_ended(struct worker_vip *wv, const struct udp_session *s, enum closed_reason reason)
{
    struct flow_ring *r = ring_on(wv);
    if (r == NULL)
        return;
    struct flow_record rec = {
        .start_us = s->created_us,
        .duration_us = since(wv->w->now_us, s->created_us),
        .bytes_to_backend = s->bytes_in,
        .bytes_from_backend = s->bytes_out,
        .datagrams_to_backend = s->requests,
        .datagrams_from_backend = s->replies,
        .slot = s->slot,
        .udp = 1,
        .reason = (uint8_t)reason,
    };
    int family;
    addr_of(&s->client, &family, rec.client, &rec.client_port);
    rec.client_family = (uint8_t)family;
    addr_of(&wv->vip->local, &family, rec.listen, &rec.listen_port);
    rec.listen_family = (uint8_t)family;
    push(r, &rec);
}

int engine_flowlog_enable(struct engine *e, uint32_t id, bool on)
{
    int err = 0;
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v == NULL) {
        err = -ENOENT;
        goto out;
    }
    for (unsigned i = 0; on && i < e->n_workers; i++) { /* every ring first: all workers or none */
        struct worker_vip *wv = &v->per_worker[i];
        if (atomic_load_explicit(&wv->flowlog, memory_order_relaxed) != NULL)
            continue;
        struct flow_ring *r = calloc(1, sizeof(*r));
        if (r == NULL) {
            err = -ENOMEM;
            goto out;
        }
        atomic_store_explicit(&wv->flowlog, r, memory_order_release);
    }
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct flow_ring *r = atomic_load_explicit(&v->per_worker[i].flowlog, memory_order_relaxed);
        if (r != NULL)
            atomic_store_explicit(&r->on, on, memory_order_relaxed);
    }
out:
    pthread_mutex_unlock(&e->control);
    return err;
}

int engine_flowlog_drain(struct engine *e, uint32_t id, struct flow_record *out, uint32_t cap, uint64_t *dropped)
{
    int n = -ENOENT;
    *dropped = 0;
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v == NULL)
        goto out;
    n = 0;
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct flow_ring *r = atomic_load_explicit(&v->per_worker[i].flowlog, memory_order_acquire);
        if (r == NULL)
            continue;
        *dropped += CTR_LOAD(r->dropped);
        uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        uint32_t take = head - tail;
        if (take > cap - (uint32_t)n)
            take = cap - (uint32_t)n;
        for (uint32_t k = 0; k < take; k++)
            out[n++] = r->slots[(tail + k) & (FLOWLOG_RING - 1)];
        atomic_store_explicit(&r->tail, tail + take, memory_order_release);
    }
out:
    pthread_mutex_unlock(&e->control);
    return n;
}

void flowlog_free(struct worker_vip *wv)
{
    free(atomic_load_explicit(&wv->flowlog, memory_order_relaxed));
    atomic_store_explicit(&wv->flowlog, NULL, memory_order_relaxed);
}
