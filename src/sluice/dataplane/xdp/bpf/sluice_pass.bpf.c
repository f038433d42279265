// SPDX-License-Identifier: GPL-2.0
/* sluice_pass.bpf.c - an XDP_PASS stub for the peer of a veth that XDP_TX must deliver to. */
/* Native veth XDP hands an XDP_TX frame to the peer only when the peer runs an XDP program too;
 * this one passes every frame up unchanged (the labs attach it with sluice.dataplane.xdp.decap). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int sluice_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
