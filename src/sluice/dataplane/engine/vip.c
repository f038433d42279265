/* vip.c: VIPs on the control thread: listening sockets, per-worker state, commands to the workers. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "flowlog.h"
#include "udp.h"

static void vip_free(struct engine *e, struct vip *v)
{
    if (v->listen_fds != NULL) {
        for (unsigned i = 0; i < e->n_workers; i++)
            if (v->listen_fds[i] >= 0)
                close(v->listen_fds[i]);
    }
    if (v->per_worker != NULL) {
        for (unsigned i = 0; i < e->n_workers; i++) {
            struct worker_vip *wv = &v->per_worker[i];
            free(wv->counters.backends);
            free(wv->sched_active);
            free(wv->active_scratch);
            free(wv->free_pipes);
            free(wv->free_pipe_caps);
            free(wv->free_bufs);
            udp_wv_free(wv);
            flowlog_free(wv);
        }
    }
    free(v->per_worker);
    free(v->listen_fds);
    table_unref(v->table);
    free(v);
}

static int bind_listeners(struct engine *e, struct vip *v)
{
    for (unsigned i = 0; i < e->n_workers; i++) {
        if (v->udp) {
            int err = udp_bind_listener(v, i, &v->listen_fds[i]);
            if (err < 0)
                return err;
            continue;
        }
        int fd = socket(v->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -errno;
        v->listen_fds[i] = fd;
        int one = 1;
        /* accepted sockets inherit TCP_NODELAY from the listening one */
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
            return -errno;
        if (v->family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
            return -errno;
        if (bind(fd, (struct sockaddr *)&v->local, v->local_len) < 0)
            return -errno;
        if (i == 0) { /* port 0: the others bind the port the kernel gave the first */
            socklen_t len = sizeof(v->local);
            if (getsockname(fd, (struct sockaddr *)&v->local, &len) < 0)
                return -errno;
            v->local_len = len;
        }
        if (listen(fd, 1024) < 0)
            return -errno;
    }
    return 0;
}

static bool is_wildcard(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
}

int engine_vip_add(struct engine *e, const struct vip_params *p, struct eng_table *table, uint32_t *id_out)
{
    int err = -ENOMEM;
    pthread_mutex_lock(&e->control);
    uint32_t id = 0;
    while (id < e->max_vips && e->vips[id] != NULL)
        id++;
    struct vip *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        table_unref(table);
        goto out;
    }
    v->table = table;
    if (id == e->max_vips) {
        err = -ENOSPC;
        goto fail;
    }
    v->id = id;
    v->local = p->local;
    v->local_len = p->local_len;
    v->family = p->local.ss_family;
    v->local_wildcard = is_wildcard(&p->local);
    v->use_splice = p->use_splice;
    v->pipe_size = p->buffer_size ? p->buffer_size : PIPE_SIZE_DEFAULT;
    v->buffer_size = p->buffer_size ? p->buffer_size : COPY_BUFFER_SIZE_DEFAULT;
    v->backend_slots = p->backend_slots;
    v->udp = v->gro = p->udp;
    v->receive_buffer = p->receive_buffer;
    v->held_max = p->held_max ? p->held_max : UDP_HELD_MAX_DEFAULT;
    v->quarantine_us = p->quarantine_us;
    atomic_init(&v->conns, 0);
    v->listen_fds = malloc(sizeof(int) * e->n_workers);
    v->per_worker = calloc(e->n_workers, sizeof(*v->per_worker));
    if (v->listen_fds == NULL || v->per_worker == NULL)
        goto fail;
    for (unsigned i = 0; i < e->n_workers; i++)
        v->listen_fds[i] = -1;
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct worker_vip *wv = &v->per_worker[i];
        wv->vip = v;
        wv->listen_fd = -1;
        wv->counters.backends = calloc(p->backend_slots, sizeof(*wv->counters.backends));
        wv->sched_active = calloc(p->backend_slots, sizeof(*wv->sched_active));
        wv->active_scratch = calloc(p->backend_slots, sizeof(*wv->active_scratch));
        wv->free_pipes = calloc(POOL_FREE_MAX, sizeof(*wv->free_pipes));
        wv->free_pipe_caps = calloc(POOL_FREE_MAX, sizeof(*wv->free_pipe_caps));
        wv->free_bufs = calloc(POOL_FREE_MAX, sizeof(*wv->free_bufs));
        if (!wv->counters.backends || !wv->sched_active || !wv->active_scratch || !wv->free_pipes ||
            !wv->free_pipe_caps || !wv->free_bufs)
            goto fail;
        if (p->udp && udp_wv_new(wv, p->backend_slots) < 0)
            goto fail;
    }
    err = bind_listeners(e, v);
    if (err < 0)
        goto fail;
    uint8_t ip[16];
    addr_of(&v->local, &v->local_addrs.family, ip, &v->local_addrs.dst_port);
    memcpy(v->local_addrs.dst, ip, 16);
    e->vips[id] = v;
    struct command cmd = {.kind = CMD_VIP_ADD, .vip = v};
    engine_command(e, &cmd);
    *id_out = id;
    err = 0;
    goto out;
fail:
    vip_free(e, v);
out:
    pthread_mutex_unlock(&e->control);
    return err;
}

struct vip *engine_vip(struct engine *e, uint32_t id)
{
    return id < e->max_vips ? e->vips[id] : NULL;
}

void engine_vip_update(struct engine *e, uint32_t id, struct eng_table *table)
{
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v == NULL) {
        table_unref(table);
    } else {
        struct eng_table *old = v->table;
        v->table = table;
        struct command cmd = {.kind = CMD_VIP_UPDATE, .vip = v, .table = table};
        engine_command(e, &cmd);
        table_unref(old);
    }
    pthread_mutex_unlock(&e->control);
}

void engine_stop_accepting(struct engine *e, uint32_t id)
{
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL) {
        struct command cmd = {.kind = CMD_STOP_ACCEPTING, .vip = v};
        engine_command(e, &cmd);
    }
    pthread_mutex_unlock(&e->control);
}

unsigned long engine_close_backend_flows(struct engine *e, uint32_t id, uint32_t slot, enum closed_reason r)
{
    unsigned long n = 0;
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL && slot < v->backend_slots) {
        struct command cmd = {.kind = CMD_CLOSE_BACKEND_FLOWS, .vip = v, .slot = slot, .reason = r};
        atomic_init(&cmd.result, 0);
        engine_command(e, &cmd);
        n = atomic_load(&cmd.result);
    }
    pthread_mutex_unlock(&e->control);
    return n;
}

void engine_vip_remove(struct engine *e, uint32_t id)
{
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL && v->per_worker[0].w != NULL) {
        struct command cmd = {.kind = CMD_VIP_REMOVE, .vip = v};
        engine_command(e, &cmd);
        for (unsigned i = 0; i < e->n_workers; i++)
            v->per_worker[i].w = NULL; /* detached: no worker touches it any more */
    }
    pthread_mutex_unlock(&e->control);
}

void engine_vip_free(struct engine *e, uint32_t id)
{
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL && v->per_worker[0].w == NULL) {
        e->vips[id] = NULL;
        vip_free(e, v);
    }
    pthread_mutex_unlock(&e->control);
}

int engine_vip_counters(struct engine *e, uint32_t id, int worker, uint32_t slots, struct vip_counters *out)
{
    int err = -ENOENT;
    pthread_mutex_lock(&e->control);
    struct vip *v = engine_vip(e, id);
    if (v != NULL && v->backend_slots == slots) {
        err = 0;
        const struct vip_counters *blocks[e->n_workers];
        unsigned n = 0;
        for (unsigned i = 0; i < e->n_workers; i++)
            if (worker < 0 || (unsigned)worker == i)
                blocks[n++] = &v->per_worker[i].counters;
        vip_counters_sum(blocks, n, v->backend_slots, out);
    }
    pthread_mutex_unlock(&e->control);
    return err;
}
