/* udp.h: the UDP full proxy's objects (sessions, upstream sockets, counters) and its worker/control API.
 *
 * Ownership and threads
 * - `struct udp_wv` (one per worker and UDP VIP) is allocated by the control thread at VIP add (with
 *   its counters), filled in and used only by its worker from CMD_VIP_ADD to CMD_VIP_REMOVE, freed by
 *   the control thread with the VIP. Sessions and upstream sockets live in it, owned by the worker.
 * - Sessions: malloc'ed when none is free, kept on a free list after they end (no allocation once
 *   warm). Bound: the worker's share of udp.max_sessions (max(1, max_sessions / workers)).
 * - Upstream sockets (`struct udp_sock`): one connected socket per session, added to epoll once.
 *   A closed session's socket is *held*: for the port quarantine nobody may use it (replies still
 *   arriving are read and discarded), then it waits, still connected to its backend, for a new
 *   session to that backend (no socket/connect/close per session once warm). At most `held_max`
 *   are held: near it, a new session that finds none past its quarantine takes the oldest with a
 *   new port (its old one given back to the kernel, as close() would), and a closed session beyond it
 *   closes the oldest. A held socket also stays its last client's: a new
 *   session of that same client address to that same backend takes it back at once, quarantine or
 *   not (a late reply can only reach the client it was meant for), so a client that keeps its port
 *   keeps its upstream port too, at any session rate (udp_sock.c). per_packet sessions' unconnected sockets are held and
 *   reused the same way (any held socket of the family past its quarantine; a connected one is
 *   disconnected first).
 * - Scratch buffers for recvmmsg/sendmmsg: one set per worker (`worker.udp_scratch`), freed with it.
 *
 * Files: udp.c (the datagram path: reads, sends, replies), udp_send.c (a session's datagrams in one
 * syscall: GSO or sendmmsg), udp_session.c (the session table), udp_sock.c (the upstream socket pool
 * and its quarantine), udp_control.c (VIP lifecycle, control side).
 */
#ifndef SLUICE_ENGINE_UDP_H
#define SLUICE_ENGINE_UDP_H

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "engine.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* linux/udp.h: the control message carries the segment size as an int */
#endif

#define UDP_BATCH 32              /* datagrams per recvmmsg / sendmmsg */
#define UDP_BUFFER 65536          /* bytes per datagram slot: > any UDP payload, >= one GRO read */
#define UDP_LISTEN_ROUNDS 4       /* recvmmsg calls per readable event of a listen socket */
#define UDP_RUN_MAX 64            /* datagrams of one session sent in one syscall (udp_send.c) */
#define UDP_HELD_MAX_DEFAULT 4096 /* held upstream sockets per worker and VIP */
#define UDP_EXCLUDE_MAX 8         /* backends one session remembers as refusing it */
#define UDP_ERRNO_MAX 134         /* dropped datagrams counted per errno below this (others: EIO's) */
#define UDP_HEADER_MAX 56         /* a PROXY v2 UDP header is at most 52 bytes */

/* Per worker and VIP, written by the worker only (CTR_*), summed by the control thread. */
struct udp_counters {
    int64_t sessions;
    uint64_t evictions;
    uint64_t rebalanced;
    uint64_t quic[QUIC__COUNT]; /* QUIC_ROUTED: sessions (per_packet: datagrams) sent to the backend their CID
                                 * names; QUIC_FALLBACK: short-header ones whose CID named no usable one */
    uint64_t dropped[DROPPED__COUNT];
    uint64_t dropped_errno[UDP_ERRNO_MAX]; /* other errnos: python shows errno.errorcode[e].lower() */
    uint64_t *datagrams_to;   /* backend_slots entries */
    uint64_t *datagrams_from; /* backend_slots entries */
};

struct udp_session;
struct udp_sock {
    int fd;
    uint32_t index;              /* in udp_wv.socks; the epoll id */
    int32_t slot;                /* backend slot it is connected to, -1 unconnected (per_packet) */
    int family;                  /* AF_INET / AF_INET6 */
    struct udp_session *session; /* NULL while held */
    uint64_t release_us;         /* held: reusable from then on */
    struct udp_sock *hprev, *hnext; /* held: the VIP's list, oldest first */
    struct udp_sock *sprev, *snext; /* held and connected: its slot's list, oldest first */
    struct udp_sock *cnext;      /* held and its client's: chain of udp_wv.by_client */
    bool has_client;             /* held: client_* name the last session's client */
    uint16_t client_port;
    uint32_t client_key;         /* the session table's key_of the client */
    uint8_t client_ip16[16];
};

struct udp_session {
    struct udp_session *hnext;        /* hash chain */
    struct udp_session *lprev, *lnext; /* LRU list: lru.lnext is the least recently used */
    struct sockaddr_storage client;
    socklen_t client_len;
    uint32_t key;                     /* hash of the client address (bucket) */
    uint8_t client_ip16[16];          /* client IP in the flow key's form */
    uint16_t client_port;
    uint32_t flow_hash;               /* of session_flow (core/udp_session.py) */
    struct udp_sock *sock;
    int32_t slot;                     /* backend counter slot, -1 for per_packet */
    uint32_t excluded[UDP_EXCLUDE_MAX]; /* slots that refused this session */
    uint8_t n_excluded;
    bool stale;                       /* backend refused or removed: rebalance on the next datagram */
    uint64_t last_us;
    uint64_t created_us;              /* when the session was opened (flow duration) */
    uint64_t requests, replies;
    uint64_t bytes_in, bytes_out;     /* bytes from and to the client (the flow log's) */
    uint8_t header[UDP_HEADER_MAX];
    uint8_t header_len;
};

struct slot_list {
    struct udp_sock *head, *tail;
};

struct udp_wv {
    struct udp_counters counters;
    uint32_t backend_slots;
    /* worker side */
    int listen_fd;
    bool accepting;
    uint32_t max_sessions; /* this worker's share */
    struct udp_session **buckets;
    uint32_t n_buckets;    /* power of two */
    struct udp_session lru; /* sentinel */
    uint32_t n_sessions;
    struct udp_session *free_sessions;
    struct udp_sock **socks;
    uint32_t n_socks, cap_socks;
    uint32_t *free_index; /* indexes of socks[] without a socket */
    uint32_t n_free_index;
    struct udp_sock held; /* sentinel of the held list */
    uint32_t n_held;
    struct slot_list *slot_held; /* backend_slots entries */
    struct slot_list unconnected_held; /* held and unconnected (per_packet), oldest first */
    struct udp_sock **by_client; /* held connected sockets by their last client's key (NULL: none kept) */
    uint32_t n_by_client;        /* power of two */
    int32_t *slot_index;         /* backend_slots entries: index in the current table, -1 none */
    struct timer idle;
    uint32_t seq; /* per_packet: the datagram counter of per_packet_flow */
    uint32_t gso_below; /* GSO sends only for segments smaller (the kernel refused this size) */
    uint64_t seed; /* of the bucket hash (a flood cannot aim at one chain) */
    uint8_t vip_ip16[16];
    uint16_t vip_port;
    struct worker_vip *wv;
};

extern const char *const dropped_names[DROPPED__COUNT];
extern const char *const quic_counter_names[QUIC__COUNT];

/* udp_control.c, control side (vip.c) */
int udp_wv_new(struct worker_vip *wv, uint32_t backend_slots);   /* -ENOMEM */
void udp_wv_free(struct worker_vip *wv);
int udp_bind_listener(struct vip *v, unsigned index, int *fd_out); /* -errno */

/* udp_control.c (commands) and udp.c (events), worker side (loop.c) */
void udp_command(struct worker *w, struct worker_vip *wv, struct command *cmd);
void udp_on_event(struct worker *w, enum handle_kind kind, uint32_t vip_id, uint32_t index);
void udp_worker_free(struct worker *w);

/* udp_control.c, control side (module.c). Sums one worker's (worker >= 0) or every worker's counters;
 * `to` and `from` hold the VIP's backend_slots entries. -ENOENT when the VIP is unknown or not UDP. */
int engine_udp_counters(struct engine *e, uint32_t id, int worker, struct udp_counters *out);
/* Fills fds / quarantined (cap entries) with the held upstream sockets of every worker; their number
 * (may exceed cap: only cap written), -ENOENT. */
int engine_udp_held(struct engine *e, uint32_t id, int *fds, uint8_t *quarantined, uint32_t cap);

/* Between the UDP files, worker side only. */

/* udp.c: the worker's recvmmsg/sendmmsg buffers, made once (0, -ENOMEM). */
int udp_scratch_make(struct worker *w);

/* udp_send.c: drops counted by errno; `n` datagrams (iov[i] each) to `to` (a client), or to the
 * connected peer (to NULL, `header` before each: a backend) in one syscall when it can. Returns how many the kernel took, the first ones;
 * 0 when the first failed, with its errno in *err (then the caller counts it and sends the rest). */
void udp_count_drop(struct udp_wv *u, int err);
int udp_send_run(struct udp_wv *u, int fd, const struct sockaddr_storage *to, socklen_t tolen, const uint8_t *header,
                 size_t header_len, const struct iovec *iov, int n, int *err);

/* udp_session.c: the session table */
int udp_sessions_attach(struct worker *w, struct worker_vip *wv); /* empty table of the worker's share; -ENOMEM */
void udp_sessions_detach(struct worker *w, struct worker_vip *wv); /* every session ends `shutdown` */
void udp_sessions_update(struct worker *w, struct worker_vip *wv); /* wv->table is new: apply its limits */
unsigned long udp_sessions_close_backend(struct worker *w, struct worker_vip *wv, uint32_t slot, enum closed_reason r);
/* The session of client `from`: found, else opened (NULL: refused and counted). */
struct udp_session *udp_session_of(struct worker *w, struct worker_vip *wv, const struct sockaddr_storage *from,
                                   socklen_t fromlen, const uint8_t *data, size_t len);
/* QUIC (core/quic.py): the backend index `data`'s connection ID names, counted; -1 (hash it). */
int32_t udp_quic_pick(struct worker_vip *wv, const uint8_t *data, size_t len);
void udp_session_touch(struct worker *w, struct udp_wv *u, struct udp_session *s); /* most recently used */
void udp_session_end(struct worker *w, struct worker_vip *wv, struct udp_session *s, enum closed_reason reason);
void udp_on_refused(struct worker_vip *wv, struct udp_session *s);
int udp_rebalance(struct worker *w, struct worker_vip *wv, struct udp_session *s);
int32_t udp_pick(struct worker *w, struct worker_vip *wv, uint32_t hash, const struct udp_session *s);
void udp_endpoint_of(const struct sockaddr_storage *ss, uint8_t ip16[16], uint16_t *port);

/* udp_sock.c: the upstream socket pool */
void udp_socks_attach(struct udp_wv *u); /* empty held list (u->wv set) */
void udp_socks_detach(struct udp_wv *u); /* closes every held socket, frees the index */
struct udp_sock *udp_sock_new(struct worker *w, struct worker_vip *wv, int family, const struct eng_backend *to);
/* For client (key, ip16, port) of the session table: its own held socket to backend `idx`, else pooled. */
struct udp_sock *udp_sock_take(struct worker *w, struct worker_vip *wv, int32_t idx, uint32_t key,
                               const uint8_t ip16[16], uint16_t port);
struct udp_sock *udp_sock_take_unconnected(struct worker *w, struct worker_vip *wv, int family); /* per_packet */
/* Hold `k`, its last session `s` (NULL: none) ended; a connected one stays that session's client's. */
void udp_sock_retire(struct worker *w, struct worker_vip *wv, struct udp_sock *k, const struct udp_session *s);
void udp_sock_list_held(struct worker *w, struct worker_vip *wv, struct command *cmd); /* CMD_UDP_HELD */

#endif
