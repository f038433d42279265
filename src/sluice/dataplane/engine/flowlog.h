/* flowlog.h: the flow log's records of ended flows, in a bounded ring per worker and VIP.
 *
 * Threads and ownership
 * - A ring (`struct flow_ring`) belongs to one `struct worker_vip`. It is allocated by the control
 *   thread the first time the VIP's flow log is switched on (engine_flowlog_enable), published
 *   through worker_vip.flowlog (release), and freed with the VIP (flowlog_free, vip_free).
 * - Single producer, single consumer: the worker pushes a record when a flow ends (only while `on`),
 *   the control thread pops them (engine_flowlog_drain, from Python every few tens of ms). A full ring
 *   drops the record and counts it in `dropped`; the worker never waits.
 * - VIPs whose flow log was never switched on have no ring: the close path pays one NULL test. */
#ifndef SLUICE_ENGINE_FLOWLOG_H
#define SLUICE_ENGINE_FLOWLOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "reasons.h"

#define FLOWLOG_RING 4096 /* records one worker holds for one VIP until the control thread drains them */

/* One ended flow (a closed TCP connection or an ended UDP session), as core/flowlog.py FlowRecord. */
struct flow_record {
    uint64_t start_us;    /* the worker's clock (CLOCK_MONOTONIC, us) at accept / the first datagram */
    uint64_t duration_us;
    uint64_t bytes_to_backend, bytes_from_backend;
    uint64_t datagrams_to_backend, datagrams_from_backend; /* UDP; 0 for TCP */
    uint8_t client[16], listen[16]; /* network byte order, IPv4 in the first 4 bytes */
    uint16_t client_port, listen_port; /* host byte order */
    int32_t slot;          /* the backend's counter slot, -1 none (UDP per_packet) */
    uint8_t client_family; /* 4 or 6 */
    uint8_t listen_family; /* 4 or 6 */
    uint8_t udp;           /* 0 TCP, 1 UDP */
    uint8_t reason;        /* enum closed_reason */
    uint8_t retries;       /* backend connects beyond the first (TCP) */
};

struct flow_ring {
    atomic_bool on;         /* set by the control thread; the worker pushes only while it is true */
    _Atomic uint32_t head;  /* next slot the worker writes (written by the worker only) */
    _Atomic uint32_t tail;  /* next slot the control thread reads (written by it only) */
    uint64_t dropped;       /* records lost to a full ring (CTR_*: written by the worker) */
    struct flow_record slots[FLOWLOG_RING];
};

struct conn;
struct engine;
struct udp_session;
struct worker_vip;

/* Worker side: the flow `c` (established) closes for `reason` / the UDP session `s` ends. No-ops
 * unless the VIP's flow log is on. */
void flowlog_tcp_closed(struct conn *c, enum closed_reason reason);
void flowlog_udp_ended(struct worker_vip *wv, const struct udp_session *s, enum closed_reason reason);
/* Worker side: queue `rec` in the ring of `wv` if its flow log is on (dropped and counted when full). */
void flowlog_push(struct worker_vip *wv, const struct flow_record *rec);

/* Control side. Switch the VIP's flow log on (allocating its rings, -ENOMEM) or off; -ENOENT. */
int engine_flowlog_enable(struct engine *e, uint32_t id, bool on);
/* Take up to `cap` records from the VIP's rings into `out`; their number (-ENOENT), and in *dropped
 * the records lost to full rings since the VIP was added (all workers). */
int engine_flowlog_drain(struct engine *e, uint32_t id, struct flow_record *out, uint32_t cap, uint64_t *dropped);
/* vip.c: free the ring of `wv` (the VIP is being freed: no worker touches it any more). */
void flowlog_free(struct worker_vip *wv);

#endif
