/* udp_control.c: a UDP VIP's lifecycle: the worker's commands (add, update, stop, close, remove) and the control side.
 *
 * The control thread allocates `struct udp_wv` and binds the listen sockets (SO_REUSEPORT, one per
 * worker); CMD_VIP_ADD hands a listen socket to its worker, which owns it until CMD_VIP_REMOVE.
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

/* CMD_VIP_ADD: the worker starts serving the VIP with the listen socket the control thread bound. */
static void attach(struct worker *w, struct worker_vip *wv)
{
    struct vip *v = wv->vip;
    struct udp_wv *u = wv->udp;
    wv->w = w;
    u->wv = wv;
    table_ref(v->table);
    wv->table = v->table;
    udp_socks_attach(u);
    u->accepting = true;
    udp_endpoint_of(&v->local, u->vip_ip16, &u->vip_port);
    u->listen_fd = v->listen_fds[w->index];
    v->listen_fds[w->index] = -1; /* the worker owns it now */
    w->vips[v->id] = wv;
    if (udp_sessions_attach(w, wv) < 0 || udp_scratch_make(w) < 0 ||
        epoll_add(w, u->listen_fd, EPOLLIN, H_UDP_LISTEN, v->id, 0) < 0) {
        close(u->listen_fd); /* short of memory: this worker serves no datagram of the VIP */
        u->listen_fd = -1;
    }
}

/* CMD_VIP_REMOVE: every session ends (`shutdown`), every socket of the VIP is closed. */
static void detach(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    udp_sessions_detach(w, wv);
    if (u->listen_fd >= 0)
        close(u->listen_fd);
    u->listen_fd = -1;
    udp_socks_detach(u);
    w->vips[wv->vip->id] = NULL;
    table_unref(wv->table);
    wv->table = NULL;
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
        udp_sessions_update(w, wv);
        break;
    }
    case CMD_STOP_ACCEPTING:
        u->accepting = false; /* datagrams of existing sessions still flow */
        break;
    case CMD_CLOSE_BACKEND_FLOWS:
        atomic_fetch_add(&cmd->result, udp_sessions_close_backend(w, wv, cmd->slot, cmd->reason));
        break;
    case CMD_VIP_REMOVE:
        detach(w, wv);
        break;
    case CMD_UDP_HELD:
        udp_sock_list_held(w, wv, cmd);
        break;
    case CMD_SHUTDOWN:
        break;
    }
}

/* ------------------------------------------------------------------ control side */

int udp_wv_new(struct worker_vip *wv, uint32_t backend_slots)
{
    struct udp_wv *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return -ENOMEM;
    wv->udp = u;
    u->listen_fd = -1;
    u->gso_below = UINT32_MAX;
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
    int one = 1, rcvbuf = (int)v->receive_buffer;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0) ||
        setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0) /* queue delay (udp.c) */
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
            for (int r = 0; r < QUIC__COUNT; r++)
                out->quic[r] += CTR_LOAD(c->quic[r]);
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
