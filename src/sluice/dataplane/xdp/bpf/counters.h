/* counters.h - incrementing the per-CPU counters of xdp_maps.h. */
#ifndef SLUICE_COUNTERS_H
#define SLUICE_COUNTERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_maps.h"
#include "parse.h"

_Static_assert(sizeof(struct global_stats) == GSTAT_COUNT * sizeof(__u64), "global_stats: u64 fields only");

/* Count one packet under a struct global_stats field index and return `verdict`. */
static __always_inline int count_global(__u32 field, int verdict)
{
	__u32 zero = 0;
	__u64 *stats = bpf_map_lookup_elem(&global_stats, &zero);

	if (stats && field < GSTAT_COUNT)
		stats[field]++;
	return verdict;
}

static __always_inline void count_backend(__u32 index, __u32 bytes, int new_flow)
{
	struct backend_stats *bs = bpf_map_lookup_elem(&backend_stats, &index);

	if (!bs)
		return;
	bs->packets++;
	bs->bytes += bytes;
	if (new_flow)
		bs->new_flows++;
}

#endif
