// SPDX-License-Identifier: GPL-2.0
/* sluice_xdp.bpf.c - the DSR data plane: parse -> look up -> forward -> count. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_consts.h"
#include "xdp_structs.h"
#include "xdp_maps.h"
#include "parse.h"
#include "flow_hash.h"
#include "counters.h"
#include "lookup.h"
#include "encap.h"

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	struct packet pkt = {};
	struct vip_key vkey = {};
	struct vip_meta *vip;
	struct vip_stats *vs;
	struct backend *be;
	__u64 *gs = count_rx();
	__u32 reason = 0, index = NO_BACKEND, hash = 0;
	int verdict, new_flow = 0;

	verdict = parse_packet(ctx, &pkt, &reason);
	if (verdict != PARSE_OK)
		return count_parse_stop(gs, reason, verdict);

	__builtin_memcpy(vkey.addr, pkt.flow.dst, sizeof(vkey.addr));
	vkey.port = pkt.flow.dport;
	vkey.proto = pkt.flow.proto;
	vip = bpf_map_lookup_elem(&vips, &vkey);
	if (!vip)
		return count_global(gs, GSTAT(pass_not_vip), XDP_PASS);
	vs = vip_counters(vip->index);

	be = pick_backend(vip, &pkt, vs, &index, &hash, &new_flow);
	if (!be)
		return count_drop_no_backend(vs);
	if (forward(ctx, &pkt, vip, be, hash) != XDP_TX)
		return count_drop_encap(vs);
	return count_forwarded(vs, index, &pkt, new_flow);
}

char LICENSE[] SEC("license") = "GPL";
