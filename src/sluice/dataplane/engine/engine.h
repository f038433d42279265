/* engine.h: the native engine's objects (engine, workers, VIPs, tables, connections) and its control API.
 *
 * Python.h only in the module's files (module.h, module*.c: the `_engine` extension); everything else
 * knows nothing of Python and links into a plain C test or a libFuzzer target
 * (tests/dataplane/engine/test_layout.py checks it, and that no engine file exceeds 500 lines).
 *
 * Threads and ownership
 * - The control thread is whoever calls the engine_* functions (Python, holding no GIL while it waits).
 *   Control calls are serialized by engine->control (a mutex); each one hands a `struct command` to every
 *   worker and waits until all of them acknowledged it.
 * - A worker thread owns its epoll fd, eventfd, timer wheel, connection pool, and its `struct worker_vip`
 *   entry of every VIP (allocated by the control thread at VIP add, touched only by that worker until
 *   the VIP is removed, then freed by the control thread).
 * - Tables (`struct eng_table`) are immutable once published and shared by every worker; refcounted
 *   (the VIP holds one reference, each worker one for its current table, each connection being connected
 *   one); the last unref frees it, on whichever thread.
 * - Counters: per worker and VIP, written by that worker only, read by the control thread with relaxed
 *   loads (counters.h). `struct vip.conns` is the one atomic shared by workers on the connection path
 *   (max_connections across all workers).
 */
#ifndef SLUICE_ENGINE_ENGINE_H
#define SLUICE_ENGINE_ENGINE_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "counters.h"
#include "pick.h"
#include "proxy_header.h"

#define MAX_CONNECT_TRIES 3    /* backends tried per client (fewer when the VIP has fewer) */
#define ACCEPT_BATCH 64        /* accept4 calls per readable event of a listening socket */
#define ACCEPT_PAUSE_US 100000 /* accepting pauses this long after EMFILE/ENFILE/ENOBUFS/ENOMEM */
#define PIPE_SIZE_DEFAULT (1 << 20)         /* F_SETPIPE_SZ asked per pipe (tcp.py PIPE_SIZE) */
#define COPY_BUFFER_SIZE_DEFAULT (256 << 10) /* copy fallback buffer (splice.py COPY_BUFFER_SIZE) */
#define POOL_FREE_MAX 64       /* drained pipes / free buffers kept per worker and VIP */
#define PUMP_ROUNDS 16         /* fill+drain rounds per direction before yielding to other flows */
#define ACCEPT_FROM_MAX 64      /* prefixes in accept_proxy_protocol.from (config MAX_PROXY_SOURCES) */
#define ACCEPT_PREFIX_BYTES 18  /* one prefix in the table spec: family (4/6), length, 16 address bytes */
#define TICK_US 10000          /* timer wheel resolution */
#define WHEEL_SLOTS 512

/* ------------------------------------------------------------------ timers (loop.c) */

struct worker;
struct timer {
    struct timer *prev, *next; /* in a wheel slot; NULL when not armed */
    uint64_t expires_us;
    void (*fire)(struct worker *w, struct timer *t);
};

struct wheel {
    struct timer slots[WHEEL_SLOTS]; /* list heads (sentinels) */
    uint64_t next_tick;              /* first tick not yet fully scanned */
    uint64_t armed;
};

void timer_arm(struct worker *w, struct timer *t, uint64_t expires_us);
void timer_cancel(struct worker *w, struct timer *t);

/* ------------------------------------------------------------------ tables */

struct eng_backend {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t slot; /* counter slot: stable per backend Endpoint */
    uint32_t server_id; /* UDP quic: the QUIC server ID routed to it (0: none, or weight 0) */
};

/* A VIP's immutable config as the workers see it. Built by the control thread, then read-only. */
struct eng_table {
    atomic_uint refs;
    struct sched_table sched;     /* points into weights / slots below */
    struct eng_backend *backends; /* sched.n, config order */
    uint32_t *weights;
    int32_t *slots;               /* Maglev, sched.m entries */
    int64_t *rr_current;          /* workers * n: worker i uses rr_current + i * n (its own state) */
    uint64_t connect_timeout_us;
    uint64_t idle_timeout_us;
    uint32_t max_connections;
    int proxy_out;    /* 0 off, 1 v1, 2 v2 */
    int accept_proxy; /* 0/1 */
    uint32_t n_accept_from; /* accept_proxy: PROXY headers only from peers in these prefixes (tcp.c) */
    struct accept_prefix {
        int family; /* 4 or 6 */
        uint8_t ip[16]; /* network byte order, IPv4 in the first 4 bytes */
        uint8_t len;    /* prefix length in bits */
    } accept_from[ACCEPT_FROM_MAX];
    /* UDP VIPs (udp.c) */
    uint32_t udp_max_sessions; /* all workers */
    uint32_t udp_responses;    /* 0: no limit */
    bool udp_per_packet;
    bool udp_source_ip;
    uint32_t udp_quic_bits; /* QUIC connection-ID routing (quic.h): server ID bits, 0 = off */
    uint64_t udp_max_queue_delay_ns; /* older client datagrams are dropped (queue_delay); 0: no bound */
};

/* n backends, m Maglev slots, room for `workers` round robin states; refs = 1. NULL on ENOMEM. */
struct eng_table *table_new(uint32_t n, uint32_t m, unsigned workers);
void table_ref(struct eng_table *t);
void table_unref(struct eng_table *t);

/* ------------------------------------------------------------------ connections (tcp*.c, tcp.h) */

enum side { SIDE_CLIENT = 0, SIDE_BACKEND = 1 };
/* CONN_LINGER: counted closed after a reset; the surviving socket waits for its send queue to empty
 * (tcp_move.c abort_flow), then is reset. */
enum conn_state { CONN_FREE, CONN_HANDSHAKE, CONN_CONNECTING, CONN_ESTABLISHED, CONN_DEAD, CONN_LINGER };

/* One direction: bytes read from its source, held in a pipe or a buffer, written to its destination. */
struct direction {
    int pipe_r, pipe_w; /* -1 when no pipe is held (taken from the pool only while bytes are in flight) */
    uint32_t pipe_cap;
    uint8_t *buf; /* NULL when no buffer is held */
    uint32_t buf_start;
    uint32_t held; /* bytes in the pipe or the buffer */
    bool eof;      /* end of stream read from the source */
    bool done;     /* and everything written, destination shut down for writing */
};

struct worker_vip;
/* A client from accept to close: PROXY handshake, connecting, established. Lives in its worker's pool. */
struct conn {
    enum conn_state state;
    uint32_t index;
    uint32_t gen[2];  /* bumped when a side's fd changes: stale epoll events are ignored */
    struct worker_vip *wv;
    int fd[2];        /* client, backend; -1 when none */
    bool readable[2], writable[2];
    bool hup[2]; /* end of stream, reset or error reported on that side: read on to the end */
    struct direction dir[2]; /* dir[0]: client -> backend, dir[1]: backend -> client */
    struct timer timer;      /* handshake / connect timeout, then idle */
    uint64_t last_active_us;
    uint64_t accepted_us;      /* when the client was accepted (flow duration) */
    uint64_t connect_start_us; /* when the current backend connect() was made (connect latency) */
    struct conn *vprev, *vnext; /* the worker_vip's list of its connections */
    struct conn *next_again;    /* worker's list of flows to pump again (PUMP_ROUNDS ran out) */
    bool in_again;
    /* connecting */
    struct eng_table *table; /* the table the picks use (a reference), NULL once established */
    struct proxy_addrs flow; /* source (client or PROXY header source) -> local */
    bool flow_known;         /* false: PROXY LOCAL/UNKNOWN header (the real endpoints pick) */
    struct proxy_addrs real; /* the connection's own peer -> local */
    uint32_t hash;
    uint32_t tried[MAX_CONNECT_TRIES];
    uint8_t n_tried;
    int32_t current;    /* backend index (in table) being connected, -1 none */
    bool sched_counted; /* the current attempt is counted in sched_active */
    uint8_t out_header[PROXY_HEADER_BUILD_MAX];
    uint8_t out_len, out_sent;
    /* established */
    uint32_t slot; /* backend counter slot */
    uint64_t moved[2]; /* bytes moved per direction (the flow log's) */
};

/* ------------------------------------------------------------------ VIPs */

struct vip;
struct udp_wv;
struct flow_ring;
/* A VIP inside one worker. Allocated and freed by the control thread, used only by its worker. */
struct worker_vip {
    struct vip *vip;
    struct worker *w;
    int listen_fd;     /* -1 once accepting stopped */
    bool paused;       /* accepting paused after EMFILE & co (listen fd disarmed in epoll) */
    struct timer resume;
    struct eng_table *table;  /* the worker's reference to the current table */
    struct vip_counters counters;
    int64_t *sched_active;    /* backend_slots: flows opened per slot in this worker (least_conn) */
    int64_t *active_scratch;  /* backend_slots: sched_active gathered in table order for a pick */
    struct conn *conns;       /* list head, every state */
    /* pools: drained pipes and free buffers (ownership: this worker) */
    int (*free_pipes)[2];
    uint32_t *free_pipe_caps;
    uint32_t n_free_pipes;
    uint8_t **free_bufs;
    uint32_t n_free_bufs;
    struct udp_wv *udp; /* UDP VIPs: sessions and upstream sockets (udp.h); NULL for TCP */
    struct flow_ring *_Atomic flowlog; /* NULL until the VIP's flow log is first switched on (flowlog.h) */
};

struct vip {
    uint32_t id;
    int family;
    struct sockaddr_storage local; /* the listen address, port filled in after bind */
    socklen_t local_len;
    bool local_wildcard;           /* listen on 0.0.0.0 / ::: getsockname per connection */
    struct proxy_addrs local_addrs;
    bool use_splice;
    uint32_t pipe_size;   /* asked of F_SETPIPE_SZ */
    uint32_t buffer_size; /* copy fallback: bytes per direction */
    uint32_t backend_slots;
    atomic_uint conns;       /* handshakes + connecting + established, all workers */
    struct eng_table *table; /* the control thread's reference */
    struct worker_vip *per_worker;
    int *listen_fds; /* workers entries; each handed to its worker at VIP add */
    /* UDP VIPs (udp.c) */
    bool udp;
    bool gro;                /* every listen socket reads GRO-coalesced datagrams */
    uint32_t receive_buffer; /* SO_RCVBUF of the listen sockets */
    uint32_t held_max;       /* held upstream sockets per worker */
    uint64_t quarantine_us;  /* port quarantine of a closed session's upstream socket */
};

/* ------------------------------------------------------------------ workers and commands */

enum command_kind {
    CMD_VIP_ADD,
    CMD_VIP_UPDATE,
    CMD_STOP_ACCEPTING,
    CMD_CLOSE_BACKEND_FLOWS,
    CMD_VIP_REMOVE,
    CMD_SHUTDOWN,
    CMD_UDP_HELD, /* list the held upstream sockets (udp.c) */
};

/* Lives on the control thread's stack while every worker applies it. */
struct command {
    enum command_kind kind;
    struct vip *vip;
    struct eng_table *table; /* VIP_UPDATE: the new table (each worker takes a reference) */
    uint32_t slot;           /* CLOSE_BACKEND_FLOWS */
    enum closed_reason reason;
    atomic_ulong result; /* CLOSE_BACKEND_FLOWS: flows closed, all workers */
    /* UDP_HELD: up to fds_cap entries written, result counts all (workers append under held_lock) */
    int *fds;
    uint8_t *fd_quarantined;
    uint32_t fds_cap;
    pthread_mutex_t *held_lock;
};

struct engine;
struct worker {
    struct engine *eng;
    unsigned index;
    pthread_t thread;
    bool started;
    int epfd;
    int evfd;
    struct command *_Atomic cmd; /* set by the control thread, taken by this worker */
    uint64_t now_us;             /* the loop's clock, read once per iteration */
    struct wheel wheel;
    struct conn *pool;
    uint32_t pool_size;
    uint32_t pool_used;      /* pool[0..pool_used) have been handed out at least once */
    struct conn *free_conns; /* returned ones, singly linked through next_again */
    struct conn *again;
    struct conn *dead;       /* closed this iteration (linked through vprev), freed at its end */
    struct worker_vip **vips; /* max_vips entries, indexed by vip id */
    uint64_t rng;             /* xorshift state (random_two draws) */
    bool stop;
    void *udp_scratch; /* recvmmsg/sendmmsg buffers, made at the first UDP VIP (udp.c) */
};

struct engine {
    unsigned n_workers;
    uint32_t max_vips;
    struct worker *workers;
    pthread_mutex_t control; /* one command at a time */
    pthread_mutex_t ack_lock;
    pthread_cond_t ack_cond;
    unsigned pending; /* workers yet to acknowledge the current command (under ack_lock) */
    struct vip **vips; /* max_vips entries; control thread only */
};

/* epoll data: kind << 56 | gen << 32 | id */
enum handle_kind { H_COMMAND = 1, H_LISTEN = 2, H_CLIENT = 3, H_BACKEND = 4, H_UDP_LISTEN = 5, H_UDP_UP = 6 };
/* UDP handles: gen = vip id, id = 0 (listen) or the upstream socket's index (udp.c) */

/* loop.c */
struct engine *engine_new(unsigned workers, uint32_t conns_per_worker, uint32_t max_vips, int *err);
void engine_free(struct engine *e); /* stops and joins the workers, frees everything */
void engine_command(struct engine *e, struct command *cmd);
void worker_ack(struct worker *w, struct command *cmd);
int epoll_add(struct worker *w, int fd, uint32_t events, enum handle_kind kind, uint32_t gen, uint32_t id);
uint64_t worker_random(struct worker *w);

/* tcp*.c: the worker side (tcp.h: what the TCP files share among themselves) */
void tcp_on_listen(struct worker *w, struct worker_vip *wv);
void tcp_on_event(struct worker *w, struct conn *c, enum side s, uint32_t events);
void tcp_run_again(struct worker *w);
void tcp_reap(struct worker *w);
void tcp_vip_attach(struct worker *w, struct worker_vip *wv);
void tcp_vip_update(struct worker *w, struct worker_vip *wv, struct eng_table *t);
void tcp_stop_accepting(struct worker *w, struct worker_vip *wv);
unsigned long tcp_close_backend_flows(struct worker *w, struct worker_vip *wv, uint32_t slot, enum closed_reason r);
void tcp_vip_detach(struct worker *w, struct worker_vip *wv);

/* A socket address as (family 4/6, raw address bytes, host-order port) (tcp.c). */
void addr_of(const struct sockaddr_storage *ss, int *family, uint8_t ip[16], uint16_t *port);

/* vip.c: the control side. Listen address: family AF_INET/AF_INET6 with `local` filled in. */
struct vip_params {
    struct sockaddr_storage local;
    socklen_t local_len;
    bool use_splice;
    uint32_t buffer_size; /* 0: the default of the mover */
    uint32_t backend_slots;
    bool udp;                /* a UDP VIP (udp.c): the fields below */
    uint32_t receive_buffer; /* 0: the kernel's default */
    uint32_t held_max;       /* 0: UDP_HELD_MAX_DEFAULT */
    uint64_t quarantine_us;
};
/* Binds the listening sockets (errors: -errno, nothing left behind) and starts the VIP on every worker.
 * Takes over `table`'s reference. */
int engine_vip_add(struct engine *e, const struct vip_params *p, struct eng_table *table, uint32_t *id_out);
void engine_vip_update(struct engine *e, uint32_t id, struct eng_table *table); /* takes the reference */
void engine_stop_accepting(struct engine *e, uint32_t id);
unsigned long engine_close_backend_flows(struct engine *e, uint32_t id, uint32_t slot, enum closed_reason r);
/* Closes every flow (shutdown) and the listening sockets; the counters stay readable until vip_free. */
void engine_vip_remove(struct engine *e, uint32_t id);
void engine_vip_free(struct engine *e, uint32_t id);
struct vip *engine_vip(struct engine *e, uint32_t id); /* NULL when unknown */
/* Sums the VIP's counters over the workers (worker < 0) or one worker's into out (out->backends:
 * `slots` entries, the VIP's backend_slots). -ENOENT when the VIP is gone (out untouched). */
int engine_vip_counters(struct engine *e, uint32_t id, int worker, uint32_t slots, struct vip_counters *out);

#endif
