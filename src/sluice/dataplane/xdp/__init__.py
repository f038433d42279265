"""The XDP data plane: Direct Server Return in one eBPF/XDP program (Katran / Maglev style).

Files: ``bpf/`` the C (one role per header; the entry ``sluice_xdp.bpf.c`` reads parse -> look up ->
forward -> count), ``build.py`` (clang, cached by sources and macros), ``loader.py`` (the only
libbpf user: load, pin, attach, BPF_PROG_TEST_RUN for tests and bench), ``maps.py`` (ctypes mirrors of ``bpf/xdp_structs.h`` and typed map access),
``plane.py`` (XdpPlane, the DataPlane for ``mode: dsr`` VIPs), ``neighbours.py`` (interface MACs and
backend MACs from the neighbour table), ``decap.py`` (attaches the backend-side decap program for ipip,
``bpf/sluice_decap.bpf.c``, or the XDP_PASS stub ``bpf/sluice_pass.bpf.c`` for a veth peer).

Maps (all pinned under /sys/fs/bpf/sluice/<instance>/, bounds set by -D from the config):
  vips          HASH           (addr16, port, proto) -> vip_meta {index, M, udp idle, fwd, src MAC, outer prefix}
  maglev        ARRAY          vip_index * MAGLEV_SIZE + slot -> backend slot (NO_BACKEND if empty)
  backends      ARRAY          backend slot -> {addr16, MAC, family, ACTIVE, vip_index, port}
  conntrack     LRU_PERCPU_HASH  40-byte flow key (= the flow-hash key) -> {backend slot, last seen ns}
  global_stats / vip_stats / backend_stats   PERCPU_ARRAY of named u64 counters

Verdicts: forwarded packets -> XDP_TX (l2: MACs rewritten; ipip: outer IPv4/IPv6 header by backend
family, source = configured prefix | flow-hash bits, destination MAC = next hop). Not ours (not IP,
not a VIP, IPv4 fragments or options, IPv6 extension headers, other ICMP) -> XDP_PASS, counted by
reason. Malformed or truncated headers (Ethernet/802.1Q, IP, TCP/UDP/ICMP, ICMP's quoted header) ->
XDP_DROP, counted by reason: the kernel would discard them anyway and they must never be forwarded.
A VIP whose Maglev slot is empty -> XDP_DROP (counted per VIP).

The connection table is per CPU (like Katran's): on real NICs RSS keeps a flow on one CPU; an entry
written on another CPU reads back zeroed and counts as a miss (falls back to Maglev).
"""
