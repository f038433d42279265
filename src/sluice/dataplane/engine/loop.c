/* loop.c: the workers' event loop (epoll, timer wheel, command queue), engine start/stop, tables. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "udp.h"

#define EVENTS_PER_WAIT 256

/* ------------------------------------------------------------------ tables */

struct eng_table *table_new(uint32_t n, uint32_t m, unsigned workers)
{
    struct eng_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->backends = calloc(n ? n : 1, sizeof(*t->backends));
    t->weights = calloc(n ? n : 1, sizeof(*t->weights));
    t->slots = calloc(m ? m : 1, sizeof(*t->slots));
    t->rr_current = calloc((size_t)(n ? n : 1) * workers, sizeof(*t->rr_current));
    if (t->backends == NULL || t->weights == NULL || t->slots == NULL || t->rr_current == NULL) {
        free(t->backends);
        free(t->weights);
        free(t->slots);
        free(t->rr_current);
        free(t);
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->sched.n = n;
    t->sched.m = m;
    t->sched.weights = t->weights;
    t->sched.slots = t->slots;
    return t;
}

void table_ref(struct eng_table *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void table_unref(struct eng_table *t)
{
    if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(t->backends);
    free(t->weights);
    free(t->slots);
    free(t->rr_current);
    free(t);
}

/* ------------------------------------------------------------------ timer wheel
 *
 * A hashed wheel of WHEEL_SLOTS lists, TICK_US per slot; a timer sits in slot (expires / TICK) %
 * SLOTS and fires on the first scan of that slot at or after `expires` (long timers wait out a
 * few revolutions there). The slot of the current tick is scanned again every iteration. */

static uint64_t tick_of(uint64_t us) { return us / TICK_US; }

static void wheel_init(struct wheel *wh, uint64_t now_us)
{
    for (int i = 0; i < WHEEL_SLOTS; i++)
        wh->slots[i].prev = wh->slots[i].next = &wh->slots[i];
    wh->next_tick = tick_of(now_us);
    wh->armed = 0;
}

static void slot_insert(struct wheel *wh, struct timer *t)
{
    uint64_t tick = tick_of(t->expires_us);
    if (tick < wh->next_tick)
        tick = wh->next_tick;
    struct timer *head = &wh->slots[tick % WHEEL_SLOTS];
    t->next = head;
    t->prev = head->prev;
    head->prev->next = t;
    head->prev = t;
}

void timer_arm(struct worker *w, struct timer *t, uint64_t expires_us)
{
    timer_cancel(w, t);
    t->expires_us = expires_us;
    slot_insert(&w->wheel, t);
    w->wheel.armed++;
}

void timer_cancel(struct worker *w, struct timer *t)
{
    if (t->next == NULL)
        return;
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->prev = t->next = NULL;
    w->wheel.armed--;
}

/* Fire every timer due at w->now_us. */
static void wheel_advance(struct worker *w)
{
    struct wheel *wh = &w->wheel;
    uint64_t now_tick = tick_of(w->now_us);
    uint64_t from = wh->next_tick;
    if (now_tick - from >= WHEEL_SLOTS)
        from = now_tick - WHEEL_SLOTS + 1;
    wh->next_tick = now_tick; /* the current tick's slot is scanned again next time */
    for (uint64_t tick = from; tick <= now_tick && wh->armed; tick++) {
        struct timer *head = &wh->slots[tick % WHEEL_SLOTS];
        /* Detach the slot, then fire or put back: a callback may arm timers (never already due). */
        struct timer list = {.prev = head->prev, .next = head->next};
        if (list.next == head)
            continue;
        list.next->prev = &list;
        list.prev->next = &list;
        head->prev = head->next = head;
        while (list.next != &list) {
            struct timer *t = list.next;
            t->prev->next = t->next;
            t->next->prev = t->prev;
            t->prev = t->next = NULL;
            if (t->expires_us <= w->now_us) {
                wh->armed--;
                t->fire(w, t);
            } else {
                slot_insert(wh, t);
            }
        }
    }
}

/* How long epoll_wait may sleep: until the first tick whose slot holds a timer (its timers may be
 * due a revolution later: the wake-up then finds nothing and sleeps again), -1 without timers. */
static int wait_timeout_ms(struct worker *w)
{
    if (w->again != NULL)
        return 0;
    if (w->wheel.armed == 0)
        return -1;
    uint64_t now_tick = tick_of(w->now_us);
    uint64_t tick = now_tick + 1;
    for (uint64_t i = 0; i < WHEEL_SLOTS; i++) {
        const struct timer *head = &w->wheel.slots[(now_tick + i) % WHEEL_SLOTS];
        if (head->next != head) {
            tick = now_tick + i;
            break;
        }
    }
    uint64_t at = tick * TICK_US;
    if (tick == now_tick) /* timers in the current slot: due within this tick, or a revolution on */
        at = (now_tick + 1) * TICK_US;
    return (int)((at - w->now_us + 999) / 1000);
}

/* ------------------------------------------------------------------ the loop */

static uint64_t clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int epoll_add(struct worker *w, int fd, uint32_t events, enum handle_kind kind, uint32_t gen, uint32_t id)
{
    struct epoll_event ev = {.events = events};
    ev.data.u64 = (uint64_t)kind << 56 | (uint64_t)(gen & 0xffffff) << 32 | id;
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev);
}

uint64_t worker_random(struct worker *w)
{
    uint64_t x = w->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void worker_ack(struct worker *w, struct command *cmd)
{
    (void)cmd;
    struct engine *e = w->eng;
    pthread_mutex_lock(&e->ack_lock);
    if (--e->pending == 0)
        pthread_cond_broadcast(&e->ack_cond);
    pthread_mutex_unlock(&e->ack_lock);
}

static void apply_command(struct worker *w, struct command *cmd)
{
    struct worker_vip *wv = cmd->vip ? &cmd->vip->per_worker[w->index] : NULL;
    if (wv != NULL && wv->udp != NULL) { /* a UDP VIP: udp.c applies every command */
        udp_command(w, wv, cmd);
        worker_ack(w, cmd);
        return;
    }
    switch (cmd->kind) {
    case CMD_VIP_ADD:
        tcp_vip_attach(w, wv);
        break;
    case CMD_VIP_UPDATE:
        tcp_vip_update(w, wv, cmd->table);
        break;
    case CMD_STOP_ACCEPTING:
        tcp_stop_accepting(w, wv);
        break;
    case CMD_CLOSE_BACKEND_FLOWS:
        atomic_fetch_add(&cmd->result, tcp_close_backend_flows(w, wv, cmd->slot, cmd->reason));
        break;
    case CMD_VIP_REMOVE:
        tcp_vip_detach(w, wv);
        break;
    case CMD_SHUTDOWN:
        w->stop = true;
        break;
    case CMD_UDP_HELD:
        break;
    }
    worker_ack(w, cmd);
}

static void on_command(struct worker *w)
{
    uint64_t n;
    if (read(w->evfd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        return;
    struct command *cmd = atomic_exchange(&w->cmd, NULL);
    if (cmd != NULL)
        apply_command(w, cmd);
}

static void dispatch(struct worker *w, const struct epoll_event *ev)
{
    enum handle_kind kind = (enum handle_kind)(ev->data.u64 >> 56);
    uint32_t gen = (uint32_t)(ev->data.u64 >> 32) & 0xffffff;
    uint32_t id = (uint32_t)ev->data.u64;
    switch (kind) {
    case H_COMMAND:
        on_command(w);
        break;
    case H_LISTEN:
        if (id < w->eng->max_vips && w->vips[id] != NULL)
            tcp_on_listen(w, w->vips[id]);
        break;
    case H_CLIENT:
    case H_BACKEND: {
        if (id >= w->pool_size)
            break;
        struct conn *c = &w->pool[id];
        enum side s = kind == H_CLIENT ? SIDE_CLIENT : SIDE_BACKEND;
        if (c->state != CONN_FREE && c->state != CONN_DEAD && (c->gen[s] & 0xffffff) == gen)
            tcp_on_event(w, c, s, ev->events);
        break;
    }
    case H_UDP_LISTEN:
    case H_UDP_UP:
        udp_on_event(w, kind, gen, id);
        break;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event events[EVENTS_PER_WAIT];
    w->now_us = clock_us();
    wheel_init(&w->wheel, w->now_us);
    while (!w->stop) {
        int n = epoll_wait(w->epfd, events, EVENTS_PER_WAIT, wait_timeout_ms(w));
        w->now_us = clock_us(); /* the one clock read of this iteration */
        for (int i = 0; i < n; i++)
            dispatch(w, &events[i]);
        tcp_run_again(w);
        wheel_advance(w);
        tcp_reap(w);
    }
    return NULL;
}

/* ------------------------------------------------------------------ engine start / stop / commands */

static void worker_free(struct worker *w)
{
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->evfd >= 0)
        close(w->evfd);
    free(w->pool);
    free(w->vips);
    udp_worker_free(w);
}

static int worker_init(struct engine *e, struct worker *w, unsigned index, uint32_t conns)
{
    w->eng = e;
    w->index = index;
    w->evfd = -1;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0)
        return -errno;
    w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->evfd < 0)
        return -errno;
    if (epoll_add(w, w->evfd, EPOLLIN, H_COMMAND, 0, 0) < 0)
        return -errno;
    w->pool = calloc(conns, sizeof(*w->pool));
    w->vips = calloc(e->max_vips, sizeof(*w->vips));
    if (w->pool == NULL || w->vips == NULL)
        return -ENOMEM;
    w->pool_size = conns; /* entries are handed out in order first (pool_used), so untouched pages of
                             the calloc'ed pool cost no memory until that many connections existed */
    w->rng = 0x9E3779B97F4A7C15ULL * (index + 1) ^ (uint64_t)clock_us();
    if (w->rng == 0)
        w->rng = 1;
    atomic_init(&w->cmd, NULL);
    return 0;
}

struct engine *engine_new(unsigned workers, uint32_t conns_per_worker, uint32_t max_vips, int *err)
{
    struct engine *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    e->n_workers = workers;
    e->max_vips = max_vips;
    pthread_mutex_init(&e->control, NULL);
    pthread_mutex_init(&e->ack_lock, NULL);
    pthread_cond_init(&e->ack_cond, NULL);
    e->vips = calloc(max_vips, sizeof(*e->vips));
    e->workers = calloc(workers, sizeof(*e->workers));
    if (e->vips == NULL || e->workers == NULL) {
        *err = -ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < workers; i++)
        e->workers[i].epfd = e->workers[i].evfd = -1;
    for (unsigned i = 0; i < workers; i++) {
        *err = worker_init(e, &e->workers[i], i, conns_per_worker);
        if (*err < 0)
            goto fail;
    }
    /* Workers never take signals: Python handles them on its main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < workers; i++) {
        int rc = pthread_create(&e->workers[i].thread, NULL, worker_main, &e->workers[i]);
        if (rc != 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            *err = -rc;
            goto fail;
        }
        e->workers[i].started = true;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    *err = 0;
    return e;
fail:
    engine_free(e);
    return NULL;
}

void engine_command(struct engine *e, struct command *cmd)
{
    pthread_mutex_lock(&e->ack_lock);
    e->pending = 0;
    for (unsigned i = 0; i < e->n_workers; i++)
        e->pending += e->workers[i].started;
    unsigned waiting = e->pending;
    pthread_mutex_unlock(&e->ack_lock);
    if (waiting == 0)
        return;
    for (unsigned i = 0; i < e->n_workers; i++) {
        struct worker *w = &e->workers[i];
        if (!w->started)
            continue;
        atomic_store(&w->cmd, cmd);
        uint64_t one = 1;
        while (write(w->evfd, &one, sizeof(one)) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_lock(&e->ack_lock);
    while (e->pending > 0)
        pthread_cond_wait(&e->ack_cond, &e->ack_lock);
    pthread_mutex_unlock(&e->ack_lock);
}

void engine_free(struct engine *e)
{
    if (e == NULL)
        return;
    if (e->workers != NULL) {
        pthread_mutex_lock(&e->control);
        for (uint32_t id = 0; id < e->max_vips; id++) {
            if (e->vips != NULL && e->vips[id] != NULL) {
                pthread_mutex_unlock(&e->control);
                engine_vip_remove(e, id);
                engine_vip_free(e, id);
                pthread_mutex_lock(&e->control);
            }
        }
        struct command cmd = {.kind = CMD_SHUTDOWN};
        engine_command(e, &cmd);
        pthread_mutex_unlock(&e->control);
        for (unsigned i = 0; i < e->n_workers; i++) {
            if (e->workers[i].started)
                pthread_join(e->workers[i].thread, NULL);
            worker_free(&e->workers[i]);
        }
    }
    free(e->workers);
    free(e->vips);
    pthread_mutex_destroy(&e->control);
    pthread_mutex_destroy(&e->ack_lock);
    pthread_cond_destroy(&e->ack_cond);
    free(e);
}
