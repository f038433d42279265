/* udp.c: the UDP full proxy's datagram path on the workers (listen and upstream reads, sends, replies).
 *
 * The decisions are those of dataplane/proxy/udp.py and core/udp_session.py (the oracle):
 * - a datagram from a new client address opens a session (udp_session.c): the flow (client -> VIP,
 *   both ports 0 for `hash: source_ip`) is hashed, the scheduler picks, a connected upstream socket
 *   (udp_sock.c) carries the session's datagrams; replies are sent from the listen socket (sendmmsg
 *   per upstream batch); `responses` ends a session once replies >= requests * responses;
 * - ECONNREFUSED (ICMP port unreachable) on a session's socket marks it stale and excludes the
 *   backend; the next datagram (or the one whose send was refused, once) is sent after a rebalance;
 * - per_packet: one unconnected socket per session (pooled, udp_sock.c), every datagram picks its backend
 *   (per_packet_flow), replies only from current backends (`unknown_source`);
 * - sends that fail are dropped and counted by errno (EAGAIN/ENOBUFS `send_buffer_full`, EMSGSIZE
 *   `too_large`), never queued;
 * - a client datagram that waited in the listen socket's queue longer than udp.max_queue_delay (its
 *   SO_TIMESTAMPNS receive time, in the same recvmmsg, against CLOCK_REALTIME read once per batch:
 *   vDSO, no syscall) is dropped and counted `queue_delay`, each GRO segment as one datagram.
 */
#define _GNU_SOURCE
#include "udp.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REASON_NAME(name, str) str,
const char *const dropped_names[DROPPED__COUNT] = {DROPPED_REASONS(REASON_NAME)};
const char *const quic_counter_names[QUIC__COUNT] = {QUIC_COUNTERS(REASON_NAME)};

/* UDP_GRO segment size, SO_RXQ_OVFL drop count, SO_TIMESTAMPNS receive time */
#define CONTROL_SPACE (CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint32_t)) + CMSG_SPACE(sizeof(struct timespec)))

/* One worker's recvmmsg/sendmmsg buffers (udp_scratch). */
struct scratch {
    struct mmsghdr in[UDP_BATCH];
    struct iovec in_iov[UDP_BATCH];
    struct sockaddr_storage names[UDP_BATCH];
    uint8_t control[UDP_BATCH][CONTROL_SPACE];
    struct iovec out_iov[UDP_BATCH];
    uint8_t *bufs; /* UDP_BATCH * UDP_BUFFER */
};

/* ------------------------------------------------------------------ small helpers */

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

/* The datagrams of one session read in a row from the listen socket, sent together (udp_send.c). */
struct run {
    struct udp_session *s; /* NULL: empty */
    int n;
    struct iovec iov[UDP_RUN_MAX];
};

/* Send the run on its session's connected socket. A refusal (ICMP port unreachable) rebalances the
 * session and sends what was left once more; other failures drop and count one datagram each. */
static void run_flush(struct worker *w, struct worker_vip *wv, struct run *r)
{
    struct udp_wv *u = wv->udp;
    struct udp_session *s = r->s;
    bool resent = false;
    for (int done = 0; s != NULL && done < r->n;) {
        int err;
        int sent = udp_send_run(u, s->sock->fd, NULL, 0, s->header, s->header_len, r->iov + done, r->n - done, &err);
        for (int i = done; i < done + sent; i++)
            CTR_ADD(wv->counters.backends[s->slot].bytes_to_backend, r->iov[i].iov_len);
        CTR_ADD(u->counters.datagrams_to[s->slot], (uint64_t)sent);
        done += sent;
        if (sent > 0)
            continue;
        if (err != ECONNREFUSED) {
            udp_count_drop(u, err);
            done++;
            continue;
        }
        udp_on_refused(wv, s);
        if (resent || udp_rebalance(w, wv, s) < 0) { /* refused again, or the session ended */
            CTR_ADD(u->counters.dropped[DROPPED_BACKEND_REFUSED], (uint64_t)(r->n - done));
            break;
        }
        resent = true;
    }
    r->s = NULL;
    r->n = 0;
}

static void send_per_packet(struct worker *w, struct worker_vip *wv, struct udp_session *s, const uint8_t *data,
                            size_t len)
{
    struct udp_wv *u = wv->udp;
    u->seq = (u->seq + 1) & 0xffff;
    uint8_t fkey[FLOW_KEY_LEN];
    flow_key_build(fkey, s->client_ip16, u->vip_ip16, (uint16_t)u->seq, u->vip_port, IPPROTO_UDP);
    int32_t idx = udp_quic_pick(wv, data, len);
    if (idx < 0)
        idx = udp_pick(w, wv, sched_flow_hash(&wv->table->sched, fkey), NULL);
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
        udp_count_drop(u, errno);
        return;
    }
    struct backend_counters *bc = &wv->counters.backends[b->slot];
    CTR_ADD(bc->flows_total, 1);
    CTR_ADD(u->counters.datagrams_to[b->slot], 1);
    CTR_ADD(bc->bytes_to_backend, len);
}

/* One client datagram: onto the run of its session (flushed first when it is another's), or sent
 * at once for per_packet. `data` stays valid until the run is flushed (the listen batch's buffer). */
static void on_client_datagram(struct worker *w, struct worker_vip *wv, struct run *r,
                               const struct sockaddr_storage *from, socklen_t fromlen, const uint8_t *data, size_t len)
{
    struct udp_wv *u = wv->udp;
    struct udp_session *s = r->s;
    if (s == NULL || r->n == UDP_RUN_MAX || !same_sockaddr(&s->client, from)) {
        run_flush(w, wv, r); /* before the lookup: opening a session may evict the run's */
        s = udp_session_of(w, wv, from, fromlen, data, len);
        if (s == NULL)
            return;
    }
    s->requests++;
    s->bytes_in += len;
    udp_session_touch(w, u, s);
    if (s->slot < 0) {
        send_per_packet(w, wv, s, data, len);
        return;
    }
    if (r->s == NULL && s->stale && udp_rebalance(w, wv, s) < 0) {
        CTR_ADD(u->counters.dropped[DROPPED_NO_BACKEND], 1);
        return;
    }
    r->s = s;
    r->iov[r->n++] = (struct iovec){(void *)data, len};
}

/* ------------------------------------------------------------------ events */

static struct scratch *scratch_of(struct worker *w) { return w->udp_scratch; }

int udp_scratch_make(struct worker *w)
{
    if (w->udp_scratch != NULL)
        return 0;
    struct scratch *sc = calloc(1, sizeof(*sc));
    if (sc == NULL)
        return -ENOMEM;
    sc->bufs = malloc((size_t)UDP_BATCH * UDP_BUFFER);
    if (sc->bufs == NULL) {
        free(sc);
        return -ENOMEM;
    }
    w->udp_scratch = sc;
    return 0;
}

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

/* The control messages of one listen read: the GRO segment size (0: none) and the kernel receive
 * time in ns since the epoch (0: none); the socket's kernel drop total is stored as it comes. */
static void read_control(struct udp_wv *u, struct msghdr *m, int *segment, uint64_t *received_ns)
{
    *segment = 0;
    *received_ns = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm != NULL; cm = CMSG_NXTHDR(m, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            memcpy(segment, CMSG_DATA(cm), sizeof(*segment));
        } else if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof(ts));
            *received_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        } else if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SO_RXQ_OVFL) {
            uint32_t drops;
            memcpy(&drops, CMSG_DATA(cm), sizeof(drops));
            CTR_SET(u->counters.dropped[DROPPED_KERNEL_OVERFLOW], drops); /* the socket's total */
        }
    }
}

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the receive timestamps' clock */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_listen(struct worker *w, struct worker_vip *wv)
{
    struct udp_wv *u = wv->udp;
    struct scratch *sc = scratch_of(w);
    struct run r = {.s = NULL, .n = 0};
    for (int round = 0; round < UDP_LISTEN_ROUNDS && u->listen_fd >= 0; round++) {
        prepare_in(sc, true);
        int n = recvmmsg(u->listen_fd, sc->in, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                udp_count_drop(u, errno);
            return;
        }
        uint64_t max_delay = wv->table->udp_max_queue_delay_ns, now_ns = max_delay ? realtime_ns() : 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *m = &sc->in[i].msg_hdr;
            size_t len = sc->in[i].msg_len;
            int segment;
            uint64_t received_ns;
            read_control(u, m, &segment, &received_ns);
            if (m->msg_flags & MSG_TRUNC) {
                CTR_ADD(u->counters.dropped[DROPPED_TRUNCATED], 1);
                continue;
            }
            if (max_delay != 0 && received_ns != 0 && now_ns > received_ns + max_delay) {
                bool split = segment > 0 && (size_t)segment < len;
                size_t datagrams = split ? (len + (size_t)segment - 1) / (size_t)segment : 1;
                CTR_ADD(u->counters.dropped[DROPPED_QUEUE_DELAY], datagrams);
                continue;
            }
            const uint8_t *data = sc->in_iov[i].iov_base;
            if (segment > 0 && (size_t)segment < len) {
                for (size_t at = 0; at < len; at += (size_t)segment) {
                    size_t part = len - at < (size_t)segment ? len - at : (size_t)segment;
                    on_client_datagram(w, wv, &r, &sc->names[i], m->msg_namelen, data + at, part);
                }
            } else {
                on_client_datagram(w, wv, &r, &sc->names[i], m->msg_namelen, data, len);
            }
        }
        run_flush(w, wv, &r); /* the next read reuses the buffers */
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
            udp_on_refused(wv, s);
        else
            udp_count_drop(u, errno);
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
        sc->out_iov[queued++] = (struct iovec){sc->in_iov[i].iov_base, len};
        if (limit && s->replies + (uint64_t)queued >= s->requests * limit)
            break; /* the last reply expected: the rest reach nobody, as in udp.py */
    }
    for (int done = 0; done < queued;) {
        int err;
        int sent = udp_send_run(u, u->listen_fd, &s->client, s->client_len, NULL, 0, sc->out_iov + done,
                                queued - done, &err);
        if (sent == 0) {
            udp_count_drop(u, err);
            done++;
            continue;
        }
        s->replies += (uint64_t)sent;
        for (int k = done; k < done + sent; k++)
            s->bytes_out += sc->out_iov[k].iov_len;
        done += sent;
    }
    if (queued == 0)
        return;
    udp_session_touch(w, u, s);
    if (limit && s->replies >= s->requests * limit)
        udp_session_end(w, wv, s, CLOSED_RESPONSES);
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

void udp_worker_free(struct worker *w)
{
    struct scratch *sc = w->udp_scratch;
    if (sc != NULL)
        free(sc->bufs);
    free(sc);
    w->udp_scratch = NULL;
}
