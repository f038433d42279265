"""The XDP data plane: Direct Server Return in one eBPF/XDP program (Katran / Maglev style).

Files: ``bpf/`` the C (one role per header; the entry ``sluice_xdp.bpf.c`` reads parse -> look up ->
forward -> count), ``build.py`` (clang, cached by sources and macros), ``loader.py`` (the only
libbpf user: load, pin, attach, BPF_PROG_TEST_RUN for tests and bench), ``maps.py`` (ctypes mirrors of ``bpf/xdp_structs.h`` and typed map access),
``plane.py`` (XdpPlane, the DataPlane for ``mode: dsr`` VIPs), ``neighbours.py`` (interface MACs and
backend MACs from the neighbour table), ``decap.py`` (attaches the backend-side decap program for ipip,
``bpf/sluice_decap.bpf.c``, or the XDP_PASS stub ``bpf/sluice_pass.bpf.c`` for a veth peer);
health checks of dsr VIPs through the VIP: ``checkpath.py`` (pure: marks and targets),
``checkroutes.py`` (policy rules and routes, the tc egress ipip program ``bpf/sluice_check_encap.bpf.c``),
``tcloader.py`` (tc attach through libbpf).

Maps (all pinned under /sys/fs/bpf/sluice/<instance>/, bounds set by -D from the config):
  vips          HASH           (addr16, port, proto) -> vip_meta {index, M, udp idle, fwd, src MAC, outer prefix}
  maglev        ARRAY          vip_index * MAGLEV_SIZE + slot -> backend slot (NO_BACKEND if empty)
  backends      ARRAY          backend slot -> {addr16, MAC, family, ACTIVE, vip_index, port}
  conntrack     LRU_HASH       40-byte flow key (= the flow-hash key) -> {backend slot, flow hash, last seen ns}
  quic_ids      HASH           (vip_index, QUIC server ID) -> backend slot (only backends with weight > 0)
  coarse_clock  ARRAY          CLOCK_MONOTONIC ns written by the plane every 0.25 s (0: the program reads the clock)
  global_stats / vip_stats / backend_stats   PERCPU_ARRAY of named u64 counters

Verdicts: forwarded packets -> XDP_TX (l2: MACs rewritten; ipip: outer IPv4/IPv6 header by backend
family, source = configured prefix | flow-hash bits, destination MAC = next hop). Not ours (not IP,
not a VIP, IPv4 fragments or options, IPv6 extension headers, other ICMP) -> XDP_PASS, counted by
reason. Malformed or truncated headers (Ethernet/802.1Q, IP, TCP/UDP/ICMP, ICMP's quoted header) ->
XDP_DROP, counted by reason: the kernel would discard them anyway and they must never be forwarded.
A VIP whose Maglev slot is empty -> XDP_DROP (counted per VIP).

The connection table is one table for all CPUs: on veth, generic XDP or a single-queue NIC one flow's
packets land on any CPU, and a SYN must win on every CPU that later sees the flow. A hit costs one
lookup: the entry keeps the flow hash (ipip's outer source needs it; only a miss hashes, for Maglev)
and is stamped from the coarse clock, written only when that clock moved.
"""
