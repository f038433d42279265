/* udp_sock.c: the UDP upstream socket pool (one socket per session, held after it with a port quarantine).
 *
 * A closed session's socket is held, not closed: during its quarantine (vip.quarantine_us) nobody may
 * use it (replies still arriving are read and discarded by udp.c), then it waits, still connected to
 * its backend, for the next session to that backend. With the pool full (pool_full: near held_max)
 * and none past its quarantine (more new sessions per second than held_max / quarantine: a flood of
 * new sources), a new session takes the oldest with a new port rather than open another (new_port);
 * beyond held_max a closed session's socket closes the oldest.
 * per_packet sessions use unconnected sockets (sendto the backend each datagram picks; a reply reaches
 * the session that holds the socket, from a current backend only): those are held the same way, on
 * their own list, and a new per_packet session takes the oldest past its quarantine, so a warm
 * per_packet VIP does no socket()/close() per session either.
 * A held connected socket also stays its last client's (`by_client`, keyed as the session table):
 * the next session of that client address to that backend takes it back even in its quarantine.
 * The quarantine keeps one client's late replies from reaching another client; this one asked,
 * from the same address, of the same backend, so a late reply reaches whom it was for (as it
 * would, had the session lasted). A client that keeps its source port (dnsperf, NTP, games, a
 * forwarder) keeps its upstream port, and a warm VIP serves it without socket()/close() at any
 * session rate; a client with a new port per request takes from the pool as before.
 * Everything here runs on the socket's worker (udp.h: ownership).
 */
#define _GNU_SOURCE
#include "udp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* The held list of `k`'s kind: its backend's, or the unconnected one. */
static struct slot_list *list_of(struct udp_wv *u, const struct udp_sock *k)
{
    return k->slot >= 0 ? &u->slot_held[k->slot] : &u->unconnected_held;
}

static struct udp_sock **client_chain(struct udp_wv *u, uint32_t key)
{
    return &u->by_client[key & (u->n_by_client - 1)];
}

static void client_unlink(struct udp_wv *u, struct udp_sock *k)
{
    struct udp_sock **p = client_chain(u, k->client_key);
    while (*p != k)
        p = &(*p)->cnext;
    *p = k->cnext;
    k->cnext = NULL;
    k->has_client = false;
}

static void held_unlink(struct udp_wv *u, struct udp_sock *k)
{
    if (k->has_client)
        client_unlink(u, k);
    k->hprev->hnext = k->hnext;
    k->hnext->hprev = k->hprev;
    k->hprev = k->hnext = NULL;
    u->n_held--;
    struct slot_list *l = list_of(u, k);
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

static void udp_sock_close(struct udp_wv *u, struct udp_sock *k)
{
    if (k->hnext != NULL)
        held_unlink(u, k);
    close(k->fd); /* leaves the epoll set with it */
    u->socks[k->index] = NULL;
    u->free_index[u->n_free_index++] = k->index;
    free(k);
}

/* A new non-blocking socket of `family`, connected to `to` (NULL: unconnected), in epoll. */
struct udp_sock *udp_sock_new(struct worker *w, struct worker_vip *wv, int family, const struct eng_backend *to)
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

/* The held socket client (key, ip16, port) last had to backend slot `slot`, or NULL. */
static struct udp_sock *client_own(struct udp_wv *u, uint32_t slot, uint32_t key, const uint8_t ip16[16], uint16_t port)
{
    if (u->by_client == NULL)
        return NULL;
    struct udp_sock *k = *client_chain(u, key);
    while (k != NULL && (k->client_key != key || k->slot != (int32_t)slot || k->client_port != port ||
                         memcmp(k->client_ip16, ip16, 16) != 0))
        k = k->cnext;
    return k;
}

/* Held sockets are (nearly) at held_max: a new session gives the oldest one a new port rather than
 * open another. The last eighth absorbs a burst of new sessions (a listen batch and more) before the
 * sessions that end refill the pool; without it, each new session beyond held_max would open a socket
 * and each session ending close one. */
static bool pool_full(const struct udp_wv *u, uint32_t held_max) { return u->n_held >= held_max - held_max / 8; }

/* The oldest held socket, still in its quarantine, for a session to `b` when the pool is full: given
 * a new port instead of closed and replaced. Disconnecting an autobound UDP socket gives its port back
 * to the kernel, as close() would; what arrived before (and a pending ICMP error) is read away; the
 * connect to `b` binds a port the kernel picks, as for a new socket. The descriptor and its epoll
 * entry stay: no close()/socket()/epoll_ctl() per session under a flood of new clients. */
static struct udp_sock *new_port(struct udp_wv *u, const struct eng_backend *b)
{
    struct udp_sock *k = u->held.hnext;
    held_unlink(u, k);
    struct sockaddr none = {.sa_family = AF_UNSPEC};
    if (connect(k->fd, &none, sizeof(none)) == 0) {
        uint8_t byte;
        for (int i = 0; i < UDP_BATCH && (recv(k->fd, &byte, 1, MSG_DONTWAIT) >= 0 || errno != EAGAIN); i++)
            ;
        if (connect(k->fd, (const struct sockaddr *)&b->addr, b->addrlen) == 0) {
            k->slot = (int32_t)b->slot;
            return k;
        }
    }
    udp_sock_close(u, k);
    return NULL;
}

/* An upstream socket connected to backend `idx` of the worker's table for a session of client (key,
 * ip16, port): the client's own held one to that backend, else a held one of that backend past its
 * quarantine, else the oldest held one past it (connected anew), else, when the pool is full, the
 * oldest held with a new port, else a new one. */
struct udp_sock *udp_sock_take(struct worker *w, struct worker_vip *wv, int32_t idx, uint32_t key,
                               const uint8_t ip16[16], uint16_t port)
{
    struct udp_wv *u = wv->udp;
    const struct eng_backend *b = &wv->table->backends[idx];
    struct udp_sock *k = client_own(u, b->slot, key, ip16, port);
    if (k != NULL) {
        held_unlink(u, k);
        return k;
    }
    k = u->slot_held[b->slot].head;
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
        udp_sock_close(u, k);
    }
    k = u->held.hnext;
    if (pool_full(u, wv->vip->held_max) && k != &u->held && k->family == b->addr.ss_family) {
        k = new_port(u, b);
        if (k != NULL)
            return k;
    }
    return udp_sock_new(w, wv, b->addr.ss_family, b);
}

/* An unconnected socket of `family` for a per_packet session: the oldest held unconnected one past its
 * quarantine, else the oldest held one past it (disconnected: connect AF_UNSPEC), else a new one. */
struct udp_sock *udp_sock_take_unconnected(struct worker *w, struct worker_vip *wv, int family)
{
    struct udp_wv *u = wv->udp;
    struct udp_sock *k = u->unconnected_held.head;
    if (k != NULL && k->release_us <= w->now_us && k->family == family) {
        held_unlink(u, k);
        return k;
    }
    k = u->held.hnext;
    if (k != &u->held && k->release_us <= w->now_us && k->family == family && k->slot >= 0) {
        held_unlink(u, k);
        struct sockaddr none = {.sa_family = AF_UNSPEC};
        if (connect(k->fd, &none, sizeof(none)) == 0) {
            k->slot = -1;
            return k;
        }
        udp_sock_close(u, k);
    }
    return udp_sock_new(w, wv, family, NULL);
}

/* Hold a closed session's socket: quarantined, then reusable; the oldest closed beyond held_max. */
void udp_sock_retire(struct worker *w, struct worker_vip *wv, struct udp_sock *k, const struct udp_session *s)
{
    struct udp_wv *u = wv->udp;
    k->session = NULL;
    if (s != NULL && k->slot >= 0 && u->by_client != NULL) {
        k->has_client = true;
        k->client_key = s->key;
        k->client_port = s->client_port;
        memcpy(k->client_ip16, s->client_ip16, 16);
        struct udp_sock **chain = client_chain(u, s->key);
        k->cnext = *chain;
        *chain = k;
    }
    k->release_us = w->now_us + wv->vip->quarantine_us;
    k->hnext = &u->held;
    k->hprev = u->held.hprev;
    u->held.hprev->hnext = k;
    u->held.hprev = k;
    u->n_held++;
    struct slot_list *l = list_of(u, k);
    k->sprev = l->tail;
    k->snext = NULL;
    if (l->tail != NULL)
        l->tail->snext = k;
    else
        l->head = k;
    l->tail = k;
    while (u->n_held > wv->vip->held_max)
        udp_sock_close(u, u->held.hnext);
}

void udp_sock_list_held(struct worker *w, struct worker_vip *wv, struct command *cmd)
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

void udp_socks_attach(struct udp_wv *u)
{
    u->held.hnext = u->held.hprev = &u->held;
    uint32_t n = 64;
    while (n < u->wv->vip->held_max && n < (1u << 20))
        n *= 2;
    u->by_client = calloc(n, sizeof(*u->by_client)); /* NULL: short of memory, no socket is kept a client's */
    u->n_by_client = u->by_client != NULL ? n : 0;
}

void udp_socks_detach(struct udp_wv *u)
{
    while (u->held.hnext != &u->held)
        udp_sock_close(u, u->held.hnext);
    free(u->socks);
    u->socks = NULL;
    free(u->free_index);
    u->free_index = NULL;
    free(u->by_client);
    u->by_client = NULL;
    u->n_by_client = 0;
    u->cap_socks = u->n_socks = u->n_free_index = 0;
}
