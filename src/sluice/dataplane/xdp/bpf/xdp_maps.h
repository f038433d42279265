/* xdp_maps.h - the maps of the sluice XDP program (all pinned by the loader, see loader.py). */
#ifndef SLUICE_XDP_MAPS_H
#define SLUICE_XDP_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_consts.h"
#include "xdp_structs.h"

/* vips: which (address, port, protocol) is a VIP and how to forward it.
 * key struct vip_key (network order), value struct vip_meta; bound MAX_VIPS. Written by the control plane. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
} vips SEC(".maps");

/* maglev: every VIP's Maglev lookup table, one row of MAGLEV_SIZE slots per VIP.
 * key __u32 vip_index * MAGLEV_SIZE + slot (host order), value __u32 backend index or NO_BACKEND;
 * bound MAX_VIPS * MAGLEV_SIZE. Written by the control plane from core/maglev.py (changed slots only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VIPS * MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} maglev SEC(".maps");

/* backends: where each backend slot forwards to.
 * key __u32 backend index (host order), value struct backend; bound MAX_BACKENDS. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

/* conntrack: the backend each flow was given, one entry per flow seen by every CPU (a flow whose
 * packets land on several CPUs, as on veth or a single-queue NIC, has one backend; a SYN rewrites it
 * for all). Least recently used evicted, with the kernel's common LRU: each CPU takes free entries
 * from its own cache and touches the shared lists once per batch (BPF_F_NO_COMMON_LRU was measured
 * slower here: it rotates its list on every insert).
 * key struct flow_key (client -> VIP, network order), value struct ct_entry; bound CT_SIZE. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_SIZE);
	__type(key, struct flow_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

/* quic_ids: QUIC connection-ID routing, the backend a VIP's server ID names (quic.h). Only backends
 * that take new flows (effective weight > 0) have an entry; others fall back to the hash.
 * key struct quic_id_key (host order), value __u32 backend index; bound MAX_BACKENDS (one ID per slot). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct quic_id_key);
	__type(value, __u32);
} quic_ids SEC(".maps");

/* coarse_clock: CLOCK_MONOTONIC ns written by the control plane every CLOCK_PERIOD (plane.py), so a
 * packet reads the time from memory instead of the clock source; 0 until written (the program then
 * reads bpf_ktime_get_ns). key __u32 0, value __u64; 1 entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} coarse_clock SEC(".maps");

/* global_stats: counters not tied to a VIP. key __u32 0, value struct global_stats; 1 entry, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct global_stats);
} global_stats SEC(".maps");

/* vip_stats: counters per VIP. key __u32 vip_meta.index, value struct vip_stats; bound MAX_VIPS, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, struct vip_stats);
} vip_stats SEC(".maps");

/* backend_stats: counters per backend slot. key __u32 backend index, value struct backend_stats;
 * bound MAX_BACKENDS, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend_stats);
} backend_stats SEC(".maps");

#endif
