//! The programs themselves (compiled for the BPF target only).
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_ZERO_CSUM_TX, BPF_RB_AVAIL_DATA,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_OK, TC_ACT_SHOT, __sk_buff, bpf_tunnel_key,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_redirect, bpf_redirect_peer,
        bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key,
        generated::{bpf_for_each_map_elem, bpf_map_delete_elem},
    },
    macros::{classifier, map, tracepoint},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key as LpmKey,
    },
    programs::{TcContext, TracePointContext},
};
use aya_ebpf::cty::c_void;
use sightline_abi as abi;
use sightline_abi::{
    Config, CtEntry, CtKey, EndpointInfo, EndpointKey, Event, IpcacheKey, IpcacheValue,
    KernelOffsets, PolicyCidrKey, PolicyCidrValue, PolicyKey, PolicyValue, ServiceKey,
    ServiceValue, TrafficCount, TrafficKey,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(abi::EVENTS_RING_BYTES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(abi::COUNTER_MAX, 0);

#[map(name = "TRAFFIC")]
static TRAFFIC: PerCpuHashMap<TrafficKey, TrafficCount> =
    PerCpuHashMap::with_max_entries(abi::TRAFFIC_MAP_SIZE, 0);

#[map(name = "KERNEL_DROPS")]
static KERNEL_DROPS: PerCpuHashMap<u32, TrafficCount> =
    PerCpuHashMap::with_max_entries(abi::KERNEL_DROPS_MAP_SIZE, 0);

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(abi::SERVICES_MAP_SIZE, 0);

/// Client → service tuple → the backend its connection went to.
#[map(name = "SVC_CT")]
static SVC_CT: LruHashMap<CtKey, ServiceValue> =
    LruHashMap::with_max_entries(abi::SVC_CT_MAP_SIZE, 0);

/// Client → backend tuple (the translated connection's key) → the service
/// address and port its replies must come from.
#[map(name = "REV_NAT")]
static REV_NAT: LruHashMap<CtKey, ServiceValue> =
    LruHashMap::with_max_entries(abi::SVC_CT_MAP_SIZE, 0);

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(abi::ENDPOINTS_MAP_SIZE, 0);

#[map(name = "IPCACHE")]
static IPCACHE: LpmTrie<IpcacheKey, IpcacheValue> =
    LpmTrie::with_max_entries(abi::IPCACHE_MAP_SIZE, 0);

#[map(name = "CT")]
static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(abi::CT_MAP_SIZE, 0);

#[map(name = "KERNEL_OFFSETS")]
static KERNEL_OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

#[map(name = "POLICY")]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(abi::POLICY_MAP_SIZE, 0);

#[map(name = "POLICY_CIDR")]
static POLICY_CIDR: LpmTrie<PolicyCidrKey, PolicyCidrValue> =
    LpmTrie::with_max_entries(abi::POLICY_CIDR_MAP_SIZE, 0);

#[map(name = "TUNNEL_KEY")]
static TUNNEL_KEY: PerCpuArray<bpf_tunnel_key> = PerCpuArray::with_max_entries(1, 0);

/// The service port number (`Event::service_id`) of the packet the tc
/// program on this CPU is handling: set to 0 when a program starts and to
/// the number once the translation is known, read by every event it emits.
/// Kept out of the programs' stack, where one more value that differs
/// between paths multiplies the verifier's states. Not pinned.
#[map(name = "PKT_SERVICE")]
static PKT_SERVICE: PerCpuArray<u16> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "LAB_NETNS")]
static LAB_NETNS: HashMap<u32, u32> = HashMap::with_max_entries(abi::LAB_NETNS_MAP_SIZE, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const TC_ACT_REDIRECT: i32 = 7;

/// The parts of a packet the datapath looks at.
#[derive(Clone, Copy)]
struct Packet {
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
    len: u32,
    /// Offset of the L4 header in the packet.
    l4_off: u16,
}

/// What connection tracking found out about a packet.
#[derive(Clone, Copy)]
struct CtResult {
    /// The connection's key in its original direction.
    key: CtKey,
    /// Policy revision the connection was last allowed under.
    policy_revision: u32,
    state: u8,
    /// Whether aggregation lets this packet be reported.
    report: bool,
    /// `CtEntry::flags`.
    flags: u8,
    fwd_packets: u64,
    fwd_bytes: u64,
    rev_packets: u64,
    rev_bytes: u64,
}

impl CtResult {
    const NONE: Self = Self {
        key: CtKey { src_addr: [0; 4], dst_addr: [0; 4], src_port: 0, dst_port: 0, protocol: 0, _pad: [0; 3] },
        policy_revision: 0,
        state: abi::CT_NONE,
        report: true,
        flags: 0,
        fwd_packets: 0,
        fwd_bytes: 0,
        rev_packets: 0,
        rev_bytes: 0,
    };
}

#[inline(always)]
fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// Counts a forwarded (`REASON_FORWARDED`) or dropped packet and its
/// bytes under its reason and direction.
#[inline(always)]
fn account(reason: u8, direction: u8, len: u32) {
    add_traffic(&TRAFFIC, &TrafficKey { reason, direction, pad: [0; 2] }, len);
}

/// One packet of `len` bytes more under `key`, creating the key on first use.
#[inline(always)]
fn add_traffic<K>(map: &PerCpuHashMap<K, TrafficCount>, key: &K, len: u32) {
    let slot = match map.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            // BPF_NOEXIST: another CPU may have created it meanwhile.
            let _ = map.insert(key, &TrafficCount::default(), 1);
            match map.get_ptr_mut(key) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: per-CPU value, only this CPU writes it while the program runs.
    unsafe {
        (*slot).packets += 1;
        (*slot).bytes += u64::from(len);
    }
}

#[inline(always)]
fn identity_of(addr: [u8; 4]) -> u32 {
    match IPCACHE.get(LpmKey::new(32, IpcacheKey { addr })) {
        Some(v) => v.identity,
        None => abi::IDENTITY_WORLD,
    }
}

/// Tunnel routing: the node to encapsulate traffic for `addr` to.
#[inline(always)]
fn tunnel_endpoint_of(addr: [u8; 4]) -> Option<[u8; 4]> {
    match IPCACHE.get(LpmKey::new(32, IpcacheKey { addr })) {
        Some(v) if v.tunnel_endpoint != [0; 4] => Some(v.tunnel_endpoint),
        _ => None,
    }
}

/// The source identity the overlay receive path left in the mark, if any.
#[inline(always)]
fn tunnel_identity(ctx: &TcContext) -> Option<u32> {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let mark = unsafe { (*(ctx.as_ptr() as *mut __sk_buff)).mark };
    if mark & abi::MARK_TUNNEL_MASK == abi::MARK_TUNNEL_IDENTITY { Some(mark & abi::TUNNEL_IDENTITY_MASK) } else { None }
}

#[inline(always)]
fn endpoint(addr: [u8; 4]) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out at once; entries are plain data.
    unsafe { ENDPOINTS.get(&EndpointKey { addr }) }.copied()
}

#[inline(always)]
fn set_packet_service(id: u16) {
    if let Some(p) = PKT_SERVICE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p = id };
    }
}

#[inline(always)]
fn packet_service() -> u16 {
    match PKT_SERVICE.get(0) {
        Some(id) => *id,
        None => 0,
    }
}

/// Writes one event straight into the ring buffer (no copy of it on the
/// stack, which the programs have little of): the packet's and connection's
/// fields, then `fill`'s. Counts it as lost when the ring buffer is full.
#[inline(always)]
fn emit(cfg: &Config, pkt: &Packet, ct: &CtResult, now: u64, fill: impl FnOnce(&mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(abi::COUNTER_EVENTS_LOST);
        return;
    };
    // SAFETY: the reserved record is ours until submitted; it is zeroed
    // before any field is read.
    let ev = unsafe {
        let p = entry.as_mut_ptr();
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    ev.ts_ns = now;
    ev.fwd_packets = ct.fwd_packets;
    ev.fwd_bytes = ct.fwd_bytes;
    ev.rev_packets = ct.rev_packets;
    ev.rev_bytes = ct.rev_bytes;
    ev.pkt_len = pkt.len;
    ev.src_port = pkt.src_port;
    ev.dst_port = pkt.dst_port;
    ev.ip_version = 4;
    ev.protocol = pkt.protocol;
    ev.tcp_flags = pkt.tcp_flags;
    ev.ct_state = ct.state;
    ev.icmp_type = pkt.icmp_type;
    ev.icmp_code = pkt.icmp_code;
    ev.version = abi::ABI_VERSION;
    ev.service_id = packet_service();
    ev.src_addr[..4].copy_from_slice(&pkt.src);
    ev.dst_addr[..4].copy_from_slice(&pkt.dst);
    fill(ev);
    let flags = if cfg.wakeup_bytes == 0 {
        0
    } else if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(cfg.wakeup_bytes) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    entry.submit(flags);
    count(abi::COUNTER_EVENTS_WRITTEN);
}

/// Reads the IPv4 and L4 headers. `Ok(None)` for frames that are not IPv4
/// (ARP, IPv6 neighbour discovery…): those pass untouched.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Packet>, u8> {
    let eth_proto: u16 = ctx.load::<u16>(12).map_err(|_| abi::DROP_INVALID_PACKET)?;
    if u16::from_be(eth_proto) != ETH_P_IP {
        return Ok(None);
    }
    let iph: [u8; 20] = ctx.load(ETH_HLEN).map_err(|_| abi::DROP_INVALID_PACKET)?;
    let ihl = usize::from(iph[0] & 0x0f) * 4;
    if iph[0] >> 4 != 4 || ihl < 20 {
        return Err(abi::DROP_INVALID_PACKET);
    }
    let frag = u16::from_be_bytes([iph[6], iph[7]]);
    if frag & 0x3fff != 0 {
        return Err(abi::DROP_FRAG_NOT_SUPPORTED);
    }
    let mut pkt = Packet {
        src: [iph[12], iph[13], iph[14], iph[15]],
        dst: [iph[16], iph[17], iph[18], iph[19]],
        src_port: 0,
        dst_port: 0,
        protocol: iph[9],
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        len: ctx.len(),
        l4_off: (ETH_HLEN + ihl) as u16,
    };
    let l4 = ETH_HLEN + ihl;
    match pkt.protocol {
        abi::IPPROTO_TCP => {
            let h: [u8; 14] = ctx.load(l4).map_err(|_| abi::DROP_CT_INVALID_HEADER)?;
            pkt.src_port = u16::from_be_bytes([h[0], h[1]]);
            pkt.dst_port = u16::from_be_bytes([h[2], h[3]]);
            pkt.tcp_flags = h[13];
        }
        abi::IPPROTO_UDP | abi::IPPROTO_SCTP => {
            let h: [u8; 4] = ctx.load(l4).map_err(|_| abi::DROP_CT_INVALID_HEADER)?;
            pkt.src_port = u16::from_be_bytes([h[0], h[1]]);
            pkt.dst_port = u16::from_be_bytes([h[2], h[3]]);
        }
        abi::IPPROTO_ICMP => {
            let h: [u8; 8] = ctx.load(l4).map_err(|_| abi::DROP_CT_INVALID_HEADER)?;
            pkt.icmp_type = h[0];
            pkt.icmp_code = h[1];
            let id = u16::from_be_bytes([h[4], h[5]]);
            // Echo request and reply share the identifier: put it on the
            // side that makes the reply's reversed key match the request.
            match h[0] {
                8 => pkt.src_port = id,
                0 => pkt.dst_port = id,
                _ => {}
            }
        }
        _ => {}
    }
    Ok(Some(pkt))
}

/// Adds to a connection counter. Not atomic (the BPF target has no 64-bit
/// fetch-add in `core`): each direction of a connection is counted by one
/// writer at a time in practice, since a flow's packets are steered to one
/// CPU per direction.
#[inline(always)]
fn add(counter: &mut u64, v: u64) -> u64 {
    *counter += v;
    *counter
}

#[inline(always)]
fn tcp_timeout(cfg: &Config, state: u8) -> u64 {
    match state {
        abi::TCP_STATE_ESTABLISHED => cfg.ct_tcp_established_timeout_ns,
        abi::TCP_STATE_CLOSING => cfg.ct_tcp_closing_timeout_ns,
        _ => cfg.ct_tcp_syn_timeout_ns,
    }
}

/// Looks the packet's connection up, creating it when new, and updates its
/// state and counters. `Err` carries a drop reason.
#[inline(always)]
fn conntrack(
    cfg: &Config,
    pkt: &Packet,
    src_identity: u32,
    dst_identity: u32,
    now: u64,
) -> Result<CtResult, u8> {
    let key = CtKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        protocol: pkt.protocol,
        _pad: [0; 3],
    };
    let is_tcp = pkt.protocol == abi::IPPROTO_TCP;
    let flags = pkt.tcp_flags;
    let bytes = u64::from(pkt.len);

    let mut found = None;
    if let Some(e) = CT.get_ptr_mut(&key) {
        // SAFETY: map value pointer, valid for the program's run.
        if unsafe { (*e).expires_ns } > now {
            found = Some((e, false));
        }
    }
    if found.is_none() {
        if let Some(e) = CT.get_ptr_mut(&key.reversed()) {
            // SAFETY: as above.
            if unsafe { (*e).expires_ns } > now {
                found = Some((e, true));
            }
        }
    }

    let Some((e, reply)) = found else {
        let tcp_state = if !is_tcp {
            abi::TCP_STATE_NONE
        } else if flags & (abi::TCP_FIN | abi::TCP_RST) != 0 {
            abi::TCP_STATE_CLOSING
        } else if flags & abi::TCP_SYN != 0 && flags & abi::TCP_ACK == 0 {
            abi::TCP_STATE_SYN_SENT
        } else {
            // Picked up mid-stream (e.g. after the table was flushed).
            abi::TCP_STATE_ESTABLISHED
        };
        let lifetime = if is_tcp { tcp_timeout(cfg, tcp_state) } else { cfg.ct_other_timeout_ns };
        let entry = CtEntry {
            created_ns: now,
            expires_ns: now + lifetime,
            last_report_fwd_ns: now,
            fwd_packets: 1,
            fwd_bytes: bytes,
            src_identity,
            dst_identity,
            fwd_flags: flags,
            tcp_state,
            // Stamped once the policy has allowed it.
            policy_revision: cfg.policy_revision.wrapping_sub(1),
            ..CtEntry::default()
        };
        if CT.insert(&key, &entry, 0).is_err() {
            count(abi::COUNTER_CT_INSERT_FAILED);
            return Err(abi::DROP_CT_MAP_INSERTION_FAILED);
        }
        count(abi::COUNTER_CT_CREATED);
        return Ok(CtResult {
            key,
            policy_revision: 0,
            state: abi::CT_NEW,
            report: true,
            flags: 0,
            fwd_packets: 1,
            fwd_bytes: bytes,
            rev_packets: 0,
            rev_bytes: 0,
        });
    };

    // SAFETY: `e` points at a live map value for the rest of this run.
    let e = unsafe { &mut *e };
    let (fwd_packets, fwd_bytes, rev_packets, rev_bytes, new_flags);
    if reply {
        rev_packets = add(&mut e.rev_packets, 1);
        rev_bytes = add(&mut e.rev_bytes, bytes);
        fwd_packets = e.fwd_packets;
        fwd_bytes = e.fwd_bytes;
        new_flags = flags & !e.rev_flags;
        e.rev_flags |= flags;
    } else {
        fwd_packets = add(&mut e.fwd_packets, 1);
        fwd_bytes = add(&mut e.fwd_bytes, bytes);
        rev_packets = e.rev_packets;
        rev_bytes = e.rev_bytes;
        new_flags = flags & !e.fwd_flags;
        e.fwd_flags |= flags;
    }

    let lifetime = if is_tcp {
        let mut state = e.tcp_state;
        if flags & (abi::TCP_FIN | abi::TCP_RST) != 0 {
            state = abi::TCP_STATE_CLOSING;
        } else if state == abi::TCP_STATE_SYN_SENT
            && reply
            && flags & abi::TCP_SYN != 0
            && flags & abi::TCP_ACK != 0
        {
            state = abi::TCP_STATE_SYN_RECV;
        } else if state == abi::TCP_STATE_SYN_RECV && !reply && flags & abi::TCP_ACK != 0 {
            state = abi::TCP_STATE_ESTABLISHED;
        }
        e.tcp_state = state;
        tcp_timeout(cfg, state)
    } else {
        cfg.ct_other_timeout_ns
    };
    e.expires_ns = now + lifetime;

    let last = if reply { &mut e.last_report_rev_ns } else { &mut e.last_report_fwd_ns };
    let report = new_flags != 0 || *last == 0 || now.wrapping_sub(*last) >= cfg.report_interval_ns;
    if report {
        *last = now;
    }
    Ok(CtResult {
        key: if reply { key.reversed() } else { key },
        policy_revision: e.policy_revision,
        state: if reply { abi::CT_REPLY } else { abi::CT_ESTABLISHED },
        report,
        flags: e.flags,
        fwd_packets,
        fwd_bytes,
        rev_packets,
        rev_bytes,
    })
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn drop_packet(cfg: &Config, pkt: &Packet, ct: &CtResult, reason: u8, ifindex: u32, ids: (u32, u32), ep: u16, dir: u8) -> i32 {
    count(abi::COUNTER_PACKETS_DROPPED);
    account(reason, dir, pkt.len);
    emit(cfg, pkt, ct, now(), |ev| {
        ev.kind = abi::EVENT_DROP;
        ev.sub_type = reason;
        ev.ifindex = ifindex;
        ev.src_identity = ids.0;
        ev.dst_identity = ids.1;
        ev.endpoint_id = ep;
        ev.direction = dir;
    });
    TC_ACT_SHOT as i32
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// A header-less drop (the packet could not be parsed).
#[inline(always)]
fn drop_unparsed(cfg: &Config, ctx: &TcContext, reason: u8, dir: u8) -> i32 {
    let pkt = Packet {
        src: [0; 4],
        dst: [0; 4],
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        len: ctx.len(),
        l4_off: 0,
    };
    drop_packet(cfg, &pkt, &CtResult::NONE, reason, ifindex(ctx), (0, 0), 0, dir)
}

/// Whether a trace at `point` is emitted under the configured aggregation.
#[inline(always)]
fn trace_wanted(cfg: &Config, point: u8, ct: &CtResult) -> bool {
    if cfg.aggregation < abi::AGGREGATION_MEDIUM {
        return true;
    }
    // Like Cilium from `lowest` up: no FROM_* traces; from `medium` up: only
    // when conntrack says the connection has something new to report.
    point < abi::TRACE_FROM_LXC && ct.report
}

#[inline(always)]
fn trace(cfg: &Config, pkt: &Packet, ct: &CtResult, point: u8, ifindex: u32, ids: (u32, u32), ep: u16, now: u64) {
    if !trace_wanted(cfg, point, ct) {
        return;
    }
    emit(cfg, pkt, ct, now, |ev| {
        ev.kind = abi::EVENT_TRACE;
        ev.sub_type = point;
        ev.ifindex = ifindex;
        ev.src_identity = ids.0;
        ev.dst_identity = ids.1;
        ev.endpoint_id = ep;
    });
}

/// The policy decision for one side of a connection.
#[derive(Clone, Copy)]
struct Decision {
    allowed: bool,
    match_type: u8,
    policy_set: u32,
}

const NOT_ENFORCED: Decision = Decision { allowed: true, match_type: abi::MATCH_NONE, policy_set: 0 };

#[inline(always)]
fn policy_key(ep: &EndpointInfo, dir: u8, peer: u32, protocol: u8, port: u16) -> LpmKey<PolicyKey> {
    LpmKey::new(
        abi::POLICY_PREFIX_FULL,
        PolicyKey { endpoint_id: ep.endpoint_id, direction: dir, _pad0: 0, peer, protocol, port_be: port.to_be_bytes(), _pad1: 0 },
    )
}

/// Looks the remote up in `ep`'s policy for `dir`: by identity, then any
/// remote (L4-only / allow-all rules), then the remote address's CIDR set.
/// Three LPM lookups whatever the number of rules.
#[inline(always)]
fn policy_decide(ep: &EndpointInfo, dir: u8, remote_identity: u32, remote_addr: [u8; 4], protocol: u8, port: u16) -> Decision {
    let enforced = if dir == abi::DIR_INGRESS { abi::EP_POLICY_INGRESS } else { abi::EP_POLICY_EGRESS };
    if ep.flags & enforced == 0 {
        return NOT_ENFORCED;
    }
    // The node itself always reaches its pods (health checks), as in Cilium.
    if dir == abi::DIR_INGRESS && remote_identity == abi::IDENTITY_HOST {
        return NOT_ENFORCED;
    }
    let found = |v: &PolicyValue| Decision { allowed: true, match_type: v.match_type, policy_set: v.policy_set };
    if let Some(v) = POLICY.get(policy_key(ep, dir, remote_identity, protocol, port)) {
        return found(v);
    }
    if let Some(v) = POLICY.get(policy_key(ep, dir, abi::PEER_ANY, protocol, port)) {
        return found(v);
    }
    let ck = LpmKey::new(
        abi::POLICY_CIDR_PREFIX_FIXED + 32,
        PolicyCidrKey { endpoint_id: ep.endpoint_id, direction: dir, _pad: 0, addr: remote_addr },
    );
    if let Some(set) = POLICY_CIDR.get(ck) {
        if set.set_id != 0 {
            if let Some(v) = POLICY.get(policy_key(ep, dir, abi::PEER_CIDR_SET | set.set_id, protocol, port)) {
                return found(v);
            }
        }
    }
    Decision { allowed: false, match_type: abi::MATCH_NONE, policy_set: 0 }
}

/// One connection as policy sees it: the client opened it to the server's
/// port. Either side may be a local endpoint.
struct Conn<'a> {
    client: [u8; 4],
    server: [u8; 4],
    client_identity: u32,
    server_identity: u32,
    // References, not copies: copying an `Option<EndpointInfo>` that is
    // `None` moves uninitialised bytes, which the verifier rejects.
    client_ep: Option<&'a EndpointInfo>,
    server_ep: Option<&'a EndpointInfo>,
    protocol: u8,
    port: u16,
}

/// Emits a policy-verdict event for one side of a connection.
#[inline(always)]
fn verdict_event(cfg: &Config, pkt: &Packet, ct: &CtResult, ep: &EndpointInfo, dir: u8, d: &Decision, audit: bool, now: u64, ids: (u32, u32)) {
    emit(cfg, pkt, ct, now, |ev| {
        ev.kind = abi::EVENT_POLICY_VERDICT;
        ev.sub_type = abi::TRACE_NONE;
        ev.ifindex = ep.ifindex;
        ev.src_identity = ids.0;
        ev.dst_identity = ids.1;
        ev.endpoint_id = ep.endpoint_id;
        ev.direction = dir;
        ev.verdict = if d.allowed {
            abi::VERDICT_FORWARDED
        } else if audit {
            abi::VERDICT_AUDIT
        } else {
            abi::VERDICT_DROPPED
        };
        ev.match_type = d.match_type;
        ev.reason = d.policy_set;
    });
}

/// Decides a connection: egress of the client's endpoint, ingress of the
/// server's. New connections always; established ones when the policy has
/// changed since they were last allowed. Returns the denying side
/// (direction, endpoint) when the packet must be dropped.
#[inline(always)]
fn enforce(cfg: &Config, pkt: &Packet, ct: &CtResult, c: &Conn<'_>, now: u64, ids: (u32, u32)) -> Option<(u8, u32, u16)> {
    let new = ct.state == abi::CT_NEW;
    if !new && ct.policy_revision == cfg.policy_revision {
        return None;
    }
    let mut denied = None;
    if let Some(ep) = c.client_ep {
        let d = policy_decide(ep, abi::DIR_EGRESS, c.server_identity, c.server, c.protocol, c.port);
        let audit = ep.flags & abi::EP_POLICY_AUDIT != 0;
        if new || !d.allowed {
            verdict_event(cfg, pkt, ct, ep, abi::DIR_EGRESS, &d, audit, now, ids);
        }
        if !d.allowed && !audit {
            denied = Some((abi::DIR_EGRESS, ep.ifindex, ep.endpoint_id));
        }
    }
    if denied.is_none() {
        if let Some(ep) = c.server_ep {
            let d = policy_decide(ep, abi::DIR_INGRESS, c.client_identity, c.client, c.protocol, c.port);
            let audit = ep.flags & abi::EP_POLICY_AUDIT != 0;
            if new || !d.allowed {
                verdict_event(cfg, pkt, ct, ep, abi::DIR_INGRESS, &d, audit, now, ids);
            }
            if !d.allowed && !audit {
                denied = Some((abi::DIR_INGRESS, ep.ifindex, ep.endpoint_id));
            }
        }
    }
    match denied {
        Some(side) => {
            // Forget the connection: every later packet is decided again.
            let _ = CT.remove(&ct.key);
            count(abi::COUNTER_POLICY_DENIED);
            Some(side)
        }
        None => {
            if let Some(e) = CT.get_ptr_mut(&ct.key) {
                // SAFETY: map value pointer, valid for the program's run.
                unsafe { (*e).policy_revision = cfg.policy_revision };
            }
            None
        }
    }
}

/// The backend a packet to a ClusterIP service goes to: `Ok(None)` when
/// its destination is not a service port. A connection keeps its backend
/// while its translated conntrack entry lives; a new one gets a random
/// backend.
#[inline(always)]
fn service_backend(pkt: &Packet, now: u64) -> Result<Option<ServiceValue>, u8> {
    if pkt.protocol != abi::IPPROTO_TCP && pkt.protocol != abi::IPPROTO_UDP {
        return Ok(None);
    }
    let mut key = ServiceKey { addr: pkt.dst, port: pkt.dst_port, protocol: pkt.protocol, _pad: 0, slot: 0, _pad2: [0; 2] };
    // SAFETY: the value is copied out at once.
    let Some(count) = (unsafe { SERVICES.get(&key) }).map(|v| v.count) else {
        return Ok(None);
    };
    if count == 0 {
        return Err(abi::DROP_NO_SERVICE_BACKEND);
    }
    let client = CtKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        protocol: pkt.protocol,
        _pad: [0; 3],
    };
    // SAFETY: as above.
    if let Some(b) = unsafe { SVC_CT.get(&client) }.copied() {
        let translated = CtKey { dst_addr: b.addr, dst_port: b.port, ..client };
        // SAFETY: as above.
        if unsafe { CT.get(&translated) }.is_some_and(|e| e.expires_ns > now) {
            return Ok(Some(b));
        }
    }
    // SAFETY: plain helper call.
    let pick = unsafe { bpf_get_prandom_u32() } % u32::from(count);
    key.slot = pick as u16 + 1;
    // SAFETY: as above.
    let Some(mut backend) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Err(abi::DROP_NO_SERVICE_BACKEND);
    };
    // Not the client itself when there is another backend: its replies
    // would be delivered locally, never seen here to be translated back.
    if backend.addr == pkt.src && count > 1 {
        key.slot = ((pick + 1) % u32::from(count)) as u16 + 1;
        // SAFETY: as above.
        let Some(other) = (unsafe { SERVICES.get(&key) }).copied() else {
            return Err(abi::DROP_NO_SERVICE_BACKEND);
        };
        backend = other;
    }
    let _ = SVC_CT.insert(&client, &backend, 0);
    Ok(Some(backend))
}

const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

/// Rewrites the packet's destination (`dst`) or source address and port
/// (TCP or UDP), updating the IP and L4 checksums incrementally.
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &mut Packet, dst: bool, addr: [u8; 4], port: u16) -> Result<(), u8> {
    let l4 = usize::from(pkt.l4_off);
    let (ip_off, port_off, old_addr, old_port) =
        if dst { (IP_DST_OFF, l4 + 2, pkt.dst, pkt.dst_port) } else { (IP_SRC_OFF, l4, pkt.src, pkt.src_port) };
    // A UDP checksum of 0 means "none" and must stay 0.
    let (csum_off, mangled) =
        if pkt.protocol == abi::IPPROTO_TCP { (l4 + 16, 0) } else { (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0)) };
    let (from_ip, to_ip) = (u64::from(u32::from_ne_bytes(old_addr)), u64::from(u32::from_ne_bytes(addr)));
    let (from_port, to_port) =
        (u64::from(u16::from_ne_bytes(old_port.to_be_bytes())), u64::from(u16::from_ne_bytes(port.to_be_bytes())));
    let failed = |_| abi::DROP_INVALID_PACKET;
    ctx.l4_csum_replace(csum_off, from_ip, to_ip, u64::from(BPF_F_PSEUDO_HDR) | mangled | 4).map_err(failed)?;
    ctx.l4_csum_replace(csum_off, from_port, to_port, mangled | 2).map_err(failed)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, from_ip, to_ip, 4).map_err(failed)?;
    ctx.store(ip_off, &addr, 0).map_err(failed)?;
    ctx.store(port_off, &port.to_be_bytes(), 0).map_err(failed)?;
    if dst {
        pkt.dst = addr;
        pkt.dst_port = port;
    } else {
        pkt.src = addr;
        pkt.src_port = port;
    }
    Ok(())
}

/// The service address a reply of a translated connection must come from
/// (looked up only for connections marked translated, so that other
/// replies pay nothing).
#[inline(always)]
fn reverse_translation(ct: &CtResult) -> Option<ServiceValue> {
    if ct.state != abi::CT_REPLY || ct.flags & abi::CT_FLAG_SERVICE == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { REV_NAT.get(&ct.key) }.copied()
}

/// The connection a packet belongs to, from its direction.
#[inline(always)]
fn conn_of<'a>(pkt: &Packet, ct: &CtResult, src_ep: Option<&'a EndpointInfo>, dst_ep: Option<&'a EndpointInfo>, ids: (u32, u32)) -> Conn<'a> {
    if ct.state == abi::CT_REPLY {
        Conn {
            client: pkt.dst,
            server: pkt.src,
            client_identity: ids.1,
            server_identity: ids.0,
            client_ep: dst_ep,
            server_ep: src_ep,
            protocol: pkt.protocol,
            port: pkt.src_port,
        }
    } else {
        Conn {
            client: pkt.src,
            server: pkt.dst,
            client_identity: ids.0,
            server_identity: ids.1,
            client_ep: src_ep,
            server_ep: dst_ep,
            protocol: pkt.protocol,
            port: pkt.dst_port,
        }
    }
}

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    set_packet_service(0);
    let cfg = config();
    let mut pkt = match parse(&ctx) {
        Ok(Some(p)) => p,
        Ok(None) => return TC_ACT_OK as i32,
        Err(reason) => return drop_unparsed(&cfg, &ctx, reason, abi::DIR_EGRESS),
    };
    let now = now();
    let ifx = ifindex(&ctx);

    // The source must be the pod behind this interface.
    let Some(src_ep) = endpoint(pkt.src) else {
        let dst_id = identity_of(pkt.dst);
        return drop_packet(&cfg, &pkt, &CtResult::NONE, abi::DROP_INVALID_SOURCE_IP, ifx, (abi::IDENTITY_UNKNOWN, dst_id), 0, abi::DIR_EGRESS);
    };
    if src_ep.ifindex != ifx {
        let dst_id = identity_of(pkt.dst);
        return drop_packet(&cfg, &pkt, &CtResult::NONE, abi::DROP_INVALID_SOURCE_IP, ifx, (abi::IDENTITY_UNKNOWN, dst_id), src_ep.endpoint_id, abi::DIR_EGRESS);
    }
    // To a ClusterIP service: on to a backend, before conntrack and policy,
    // which see the backend (as Kubernetes NetworkPolicy does).
    let service = match service_backend(&pkt, now) {
        Ok(s) => s,
        Err(reason) => {
            let dst_id = identity_of(pkt.dst);
            return drop_packet(&cfg, &pkt, &CtResult::NONE, reason, ifx, (src_ep.identity, dst_id), src_ep.endpoint_id, abi::DIR_EGRESS);
        }
    };
    // The service port, as scalars (the stack has no room for another value).
    let (front_addr, front_port) = (pkt.dst, pkt.dst_port);
    if let Some(b) = service {
        // The events of this packet name the service it was sent to.
        set_packet_service(b.service_id);
        if let Err(reason) = rewrite(&ctx, &mut pkt, true, b.addr, b.port) {
            let dst_id = identity_of(pkt.dst);
            return drop_packet(&cfg, &pkt, &CtResult::NONE, reason, ifx, (src_ep.identity, dst_id), src_ep.endpoint_id, abi::DIR_EGRESS);
        }
    }
    let dst_ep = endpoint(pkt.dst);
    let dst_id = match dst_ep {
        Some(ep) => ep.identity,
        None => identity_of(pkt.dst),
    };
    let ids = (src_ep.identity, dst_id);

    let ct = match conntrack(&cfg, &pkt, ids.0, ids.1, now) {
        Ok(ct) => ct,
        Err(reason) => return drop_packet(&cfg, &pkt, &CtResult::NONE, reason, ifx, ids, src_ep.endpoint_id, abi::DIR_EGRESS),
    };

    if service.is_some() {
        // Where the backend's replies must appear to come from, and the mark
        // that tells the reply path to look.
        // SAFETY: presence check only.
        if ct.state == abi::CT_NEW || unsafe { REV_NAT.get(&ct.key) }.is_none() {
            let front = ServiceValue {
                addr: front_addr,
                port: front_port,
                count: 0,
                service_id: packet_service(),
                _pad: [0; 2],
            };
            let _ = REV_NAT.insert(&ct.key, &front, 0);
        }
        if ct.flags & abi::CT_FLAG_SERVICE == 0 {
            if let Some(e) = CT.get_ptr_mut(&ct.key) {
                // SAFETY: map value pointer, valid for the program's run.
                unsafe { (*e).flags |= abi::CT_FLAG_SERVICE };
            }
        }
    }
    // A backend's reply to a client of the service: sent from the service's
    // address, after the events (which name the backend, and the service).
    let reverse = reverse_translation(&ct);
    if let Some(r) = reverse {
        set_packet_service(r.service_id);
    }

    trace(&cfg, &pkt, &ct, abi::TRACE_FROM_LXC, ifx, ids, src_ep.endpoint_id, now);
    let conn = conn_of(&pkt, &ct, Some(&src_ep), dst_ep.as_ref(), ids);
    if let Some((dir, ep_ifindex, ep_id)) = enforce(&cfg, &pkt, &ct, &conn, now, ids) {
        return drop_packet(&cfg, &pkt, &ct, abi::DROP_POLICY_DENIED, ep_ifindex, ids, ep_id, dir);
    }

    let Some(dst_ep) = dst_ep else {
        // To a pod of another node, in tunnel routing: encapsulated, the
        // source's identity in the tunnel header.
        if cfg.tunnel_ifindex != 0 {
            if let Some(remote) = tunnel_endpoint_of(pkt.dst) {
                count(abi::COUNTER_PACKETS_FORWARDED);
                account(abi::REASON_FORWARDED, abi::DIR_EGRESS, pkt.len);
                trace(&cfg, &pkt, &ct, abi::TRACE_TO_OVERLAY, cfg.tunnel_ifindex, ids, src_ep.endpoint_id, now);
                if let Some(r) = reverse {
                    if rewrite(&ctx, &mut pkt, false, r.addr, r.port).is_err() {
                        return TC_ACT_SHOT as i32;
                    }
                }
                if set_tunnel_key(&ctx, remote, src_ep.identity) != 0 {
                    return drop_packet(&cfg, &pkt, &ct, abi::DROP_INVALID_PACKET, cfg.tunnel_ifindex, ids, src_ep.endpoint_id, abi::DIR_EGRESS);
                }
                // SAFETY: plain helper call.
                return unsafe { bpf_redirect(cfg.tunnel_ifindex, 0) } as i32;
            }
        }
        // To the node itself or beyond it: the node's stack routes it.
        count(abi::COUNTER_PACKETS_FORWARDED);
        account(abi::REASON_FORWARDED, abi::DIR_EGRESS, pkt.len);
        trace(&cfg, &pkt, &ct, abi::TRACE_TO_STACK, ifx, ids, src_ep.endpoint_id, now);
        if let Some(r) = reverse {
            if rewrite(&ctx, &mut pkt, false, r.addr, r.port).is_err() {
                return TC_ACT_SHOT as i32;
            }
        }
        return TC_ACT_OK as i32;
    };

    // Straight into the destination pod: its MAC, our side's MAC as source.
    if ctx.store(0, &dst_ep.mac, 0).is_err() || ctx.store(6, &dst_ep.node_mac, 0).is_err() {
        return drop_packet(&cfg, &pkt, &ct, abi::DROP_INVALID_PACKET, ifx, ids, src_ep.endpoint_id, abi::DIR_EGRESS);
    }
    count(abi::COUNTER_PACKETS_FORWARDED);
    account(abi::REASON_FORWARDED, abi::DIR_EGRESS, pkt.len);
    trace(&cfg, &pkt, &ct, abi::TRACE_TO_LXC, dst_ep.ifindex, ids, dst_ep.endpoint_id, now);
    if let Some(r) = reverse {
        if rewrite(&ctx, &mut pkt, false, r.addr, r.port).is_err() {
            return TC_ACT_SHOT as i32;
        }
    }
    // SAFETY: plain helper call.
    let rc = unsafe { bpf_redirect_peer(dst_ep.ifindex, 0) };
    if rc as i32 == TC_ACT_REDIRECT { TC_ACT_REDIRECT } else { TC_ACT_SHOT as i32 }
}

/// Sets the packet's tunnel metadata: outer destination `remote`, the
/// source identity as the VNI. The key lives in a per-CPU scratch map.
#[inline(always)]
fn set_tunnel_key(ctx: &TcContext, remote: [u8; 4], identity: u32) -> i64 {
    let Some(key) = TUNNEL_KEY.get_ptr_mut(0) else { return -1 };
    // SAFETY: a valid per-CPU map value, ours for this run; all-zero bytes
    // are a valid key.
    unsafe {
        core::ptr::write_bytes(key, 0, 1);
        (*key).tunnel_id = identity & abi::TUNNEL_IDENTITY_MASK;
        (*key).__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(remote);
        (*key).tunnel_ttl = 64;
        bpf_skb_set_tunnel_key(
            ctx.as_ptr() as *mut __sk_buff,
            key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            u64::from(BPF_F_ZERO_CSUM_TX),
        )
    }
}

/// The source identity the sending node put in the tunnel header.
#[inline(always)]
fn get_tunnel_identity(ctx: &TcContext) -> Option<u32> {
    let key = TUNNEL_KEY.get_ptr_mut(0)?;
    // SAFETY: as above.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(ctx.as_ptr() as *mut __sk_buff, key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0)
    };
    // SAFETY: as above; filled by the helper.
    if rc == 0 { Some(unsafe { (*key).tunnel_id } & abi::TUNNEL_IDENTITY_MASK) } else { None }
}

/// A packet that arrived through the tunnel (on the tunnel device's
/// ingress): for a pod of this node, with the source identity the
/// sending node put in the tunnel header. The identity travels to
/// `to_container` in the mark, and the packet goes to the pod's device.
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    set_packet_service(0);
    let ctx = &ctx;
    let cfg = config();
    let pkt = match parse(ctx) {
        Ok(Some(p)) => p,
        Ok(None) => return TC_ACT_OK as i32,
        Err(reason) => return drop_unparsed(&cfg, ctx, reason, abi::DIR_INGRESS),
    };
    let (cfg, pkt) = (&cfg, &pkt);
    let now = now();
    let ifx = ifindex(ctx);
    let identity = get_tunnel_identity(ctx);
    let src_identity = identity.unwrap_or(abi::IDENTITY_UNKNOWN);
    let Some(dst_ep) = endpoint(pkt.dst) else {
        let ids = (src_identity, identity_of(pkt.dst));
        return drop_packet(cfg, pkt, &CtResult::NONE, abi::DROP_UNKNOWN_L3_TARGET, ifx, ids, 0, abi::DIR_INGRESS);
    };
    let ids = (src_identity, dst_ep.identity);
    if identity.is_none() {
        return drop_packet(cfg, pkt, &CtResult::NONE, abi::DROP_INVALID_PACKET, ifx, ids, dst_ep.endpoint_id, abi::DIR_INGRESS);
    }
    trace(cfg, pkt, &CtResult::NONE, abi::TRACE_FROM_OVERLAY, ifx, ids, dst_ep.endpoint_id, now);
    // Addressed to the pod: its MAC, our side's MAC as source.
    if ctx.store(0, &dst_ep.mac, 0).is_err() || ctx.store(6, &dst_ep.node_mac, 0).is_err() {
        return drop_packet(cfg, pkt, &CtResult::NONE, abi::DROP_INVALID_PACKET, ifx, ids, dst_ep.endpoint_id, abi::DIR_INGRESS);
    }
    ctx.set_mark(abi::MARK_TUNNEL_IDENTITY | src_identity);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(dst_ep.ifindex, 0) as i32 }
}

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    set_packet_service(0);
    let cfg = config();
    let mut pkt = match parse(&ctx) {
        Ok(Some(p)) => p,
        Ok(None) => return TC_ACT_OK as i32,
        Err(reason) => return drop_unparsed(&cfg, &ctx, reason, abi::DIR_INGRESS),
    };
    let now = now();
    let ifx = ifindex(&ctx);
    let Some(dst_ep) = endpoint(pkt.dst) else {
        // Not for the pod behind this device (e.g. a stray route).
        let ids = (identity_of(pkt.src), identity_of(pkt.dst));
        return drop_packet(&cfg, &pkt, &CtResult::NONE, abi::DROP_UNKNOWN_L3_TARGET, ifx, ids, 0, abi::DIR_INGRESS);
    };
    // From the tunnel: the identity its header carried, not the ipcache's.
    let src_identity = match tunnel_identity(&ctx) {
        Some(id) => id,
        None => identity_of(pkt.src),
    };
    let ids = (src_identity, dst_ep.identity);
    let ct = match conntrack(&cfg, &pkt, ids.0, ids.1, now) {
        Ok(ct) => ct,
        Err(reason) => return drop_packet(&cfg, &pkt, &CtResult::NONE, reason, ifx, ids, dst_ep.endpoint_id, abi::DIR_INGRESS),
    };
    // The reply of a backend on another node to a client of a service here:
    // from the service's address once the events (which name the backend,
    // and the service) are out (the translation was made on this node).
    let reverse = reverse_translation(&ct);
    if let Some(r) = reverse {
        set_packet_service(r.service_id);
    }
    let src_ep = endpoint(pkt.src);
    let conn = conn_of(&pkt, &ct, src_ep.as_ref(), Some(&dst_ep), ids);
    if let Some((dir, ep_ifindex, ep_id)) = enforce(&cfg, &pkt, &ct, &conn, now, ids) {
        return drop_packet(&cfg, &pkt, &ct, abi::DROP_POLICY_DENIED, ep_ifindex, ids, ep_id, dir);
    }
    count(abi::COUNTER_PACKETS_FORWARDED);
    account(abi::REASON_FORWARDED, abi::DIR_INGRESS, pkt.len);
    trace(&cfg, &pkt, &ct, abi::TRACE_TO_LXC, ifx, ids, dst_ep.endpoint_id, now);
    if let Some(r) = reverse {
        if rewrite(&ctx, &mut pkt, false, r.addr, r.port).is_err() {
            return TC_ACT_SHOT as i32;
        }
    }
    TC_ACT_OK as i32
}

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(i64::from)
}

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(off) = KERNEL_OFFSETS.get(0) else { return Ok(()) };
    let off = *off;
    if off.valid == 0 {
        return Ok(());
    }
    // SAFETY: offsets come from this tracepoint's format file.
    let protocol: u16 = unsafe { ctx.read_at(usize::from(off.tp_protocol)) }.map_err(i64::from)?;
    if protocol != ETH_P_IP {
        return Ok(());
    }
    // SAFETY: as above.
    let skb: u64 = unsafe { ctx.read_at(usize::from(off.tp_skbaddr)) }.map_err(i64::from)?;
    // SAFETY: as above.
    let reason: u32 = unsafe { ctx.read_at(usize::from(off.tp_reason)) }.map_err(i64::from)?;
    // Drops by tc programs are the datapath's own, reported with their reason.
    if reason != 0 && (reason == u32::from(off.reason_tc_ingress) || reason == u32::from(off.reason_tc_egress)) {
        return Ok(());
    }
    let dev: u64 = read(skb + u64::from(off.skb_dev))?;
    if dev == 0 {
        return Ok(());
    }
    let net: u64 = read(dev + u64::from(off.dev_nd_net))?;
    let inum: u32 = read(net + u64::from(off.net_ns_inum))?;
    // SAFETY: plain lookup, value not kept.
    if unsafe { LAB_NETNS.get(&inum) }.is_none() {
        return Ok(());
    }
    let ifindex: u32 = read(dev + u64::from(off.dev_ifindex))?;
    let head: u64 = read(skb + u64::from(off.skb_head))?;
    let nh: u16 = read(skb + u64::from(off.skb_network_header))?;
    let len: u32 = read(skb + u64::from(off.skb_len))?;
    if nh == 0xffff {
        return Ok(());
    }
    let iph: [u8; 20] = read(head + u64::from(nh))?;
    if iph[0] >> 4 != 4 {
        return Ok(());
    }
    let ihl = u64::from(iph[0] & 0x0f) * 4;
    let mut pkt = Packet {
        src: [iph[12], iph[13], iph[14], iph[15]],
        dst: [iph[16], iph[17], iph[18], iph[19]],
        src_port: 0,
        dst_port: 0,
        protocol: iph[9],
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        len,
        l4_off: 0,
    };
    let l4 = head + u64::from(nh) + ihl;
    match pkt.protocol {
        abi::IPPROTO_TCP => {
            if let Ok(h) = read::<[u8; 14]>(l4) {
                pkt.src_port = u16::from_be_bytes([h[0], h[1]]);
                pkt.dst_port = u16::from_be_bytes([h[2], h[3]]);
                pkt.tcp_flags = h[13];
            }
        }
        abi::IPPROTO_UDP | abi::IPPROTO_SCTP => {
            if let Ok(h) = read::<[u8; 4]>(l4) {
                pkt.src_port = u16::from_be_bytes([h[0], h[1]]);
                pkt.dst_port = u16::from_be_bytes([h[2], h[3]]);
            }
        }
        abi::IPPROTO_ICMP => {
            if let Ok(h) = read::<[u8; 2]>(l4) {
                pkt.icmp_type = h[0];
                pkt.icmp_code = h[1];
            }
        }
        _ => {}
    }
    count(abi::COUNTER_KERNEL_DROPS_SEEN);
    add_traffic(&KERNEL_DROPS, &reason, len);
    let cfg = config();
    let ids = (identity_of(pkt.src), identity_of(pkt.dst));
    emit(&cfg, &pkt, &CtResult::NONE, now(), |ev| {
        ev.kind = abi::EVENT_KERNEL_DROP;
        ev.sub_type = 0;
        // Not a tc program's packet: whatever one left in PKT_SERVICE is not
        // this one's.
        ev.service_id = 0;
        ev.reason = reason;
        ev.ifindex = ifindex;
        ev.src_identity = ids.0;
        ev.dst_identity = ids.1;
    });
    Ok(())
}

/// One conntrack garbage-collection pass, as `ct_gc_entry` sees it.
#[repr(C)]
struct GcPass {
    now: u64,
    deleted: u64,
    left: u64,
}

/// `bpf_for_each_map_elem`'s callback over `CT`: deletes the entry if it
/// expired before `pass.now`, counts it either way. Returns 0 (go on).
#[inline(never)]
extern "C" fn ct_gc_entry(map: *mut c_void, key: *mut CtKey, value: *mut CtEntry, pass: *mut GcPass) -> i64 {
    // SAFETY: the kernel passes its map, the current key and value, and the
    // pass on `ct_gc`'s stack, all valid for the call.
    unsafe {
        if (*value).expires_ns <= (*pass).now {
            // Deleting the current element is allowed during the walk (the
            // bucket lists are RCU-safe); a failure means it went meanwhile.
            if bpf_map_delete_elem(map, key.cast()) == 0 {
                (*pass).deleted += 1;
            }
        } else {
            (*pass).left += 1;
        }
    }
    0
}

/// Conntrack garbage collection in the kernel: deletes every entry that
/// expired before the time the collector wrote into the buffer and reports
/// what it deleted and what it left (layout: `abi::GC_*`). Run with
/// `BPF_PROG_TEST_RUN`, never attached: no entry is copied to user space.
#[classifier]
pub fn ct_gc(ctx: TcContext) -> i32 {
    let Ok(now) = ctx.load::<u64>(abi::GC_NOW_OFFSET) else { return TC_ACT_SHOT as i32 };
    let mut pass = GcPass { now, deleted: 0, left: 0 };
    // SAFETY: CT is a map definition the loader relocates; the callback has
    // the signature the helper expects and `pass` outlives the call.
    unsafe {
        bpf_for_each_map_elem(
            (&raw const CT).cast_mut().cast(),
            ct_gc_entry as *mut c_void,
            (&raw mut pass).cast(),
            0,
        );
    }
    if ctx.store(abi::GC_DELETED_OFFSET, &pass.deleted, 0).is_err() || ctx.store(abi::GC_LEFT_OFFSET, &pass.left, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
