//! The pods' gateway address on the node.
//!
//! Every pod routes through its node's gateway, the first address of the
//! node's pod range (`NodeState::node_ip`), as the CNI plugin configures
//! it: a link-scope route to the gateway and a default route through it.
//! Something on the node must own that address so that the node answers
//! the pods' ARP requests for it and takes what they send it: the agent
//! puts it on the node's loopback device as a `/32` (the lab does the same
//! when it makes a node). A pod's first packet then finds a neighbour.
//!
//! The address is added over rtnetlink (`RTM_NEWADDR`) in the node's
//! network namespace — the image has no `ip` binary — and an address
//! already there is left as it is. When the node's range changes, the old
//! gateway is removed (`RTM_DELADDR`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeader, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The loopback device's index: 1 in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Why the address could not be given or taken.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the node's network namespace {path}: {source}")]
    Netns { path: String, #[source] source: std::io::Error },
    #[error("rtnetlink: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{action} {address}/32 on lo: {source}")]
    Kernel { action: &'static str, address: Ipv4Addr, #[source] source: std::io::Error },
    #[error("rtnetlink: an answer that cannot be read: {0}")]
    Decode(String),
}

fn message(address: Ipv4Addr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header = AddressHeader {
        family: AddressFamily::Inet,
        prefix_len: 32,
        scope: AddressScope::Universe,
        index: LOOPBACK_INDEX,
        ..AddressHeader::default()
    };
    msg.attributes = vec![AddressAttribute::Local(IpAddr::V4(address)), AddressAttribute::Address(IpAddr::V4(address))];
    msg
}

/// Sends one request in the current namespace and reads its acknowledgement:
/// `Ok(None)` for success, `Ok(Some(errno))` for the kernel's refusal.
fn request(payload: RouteNetlinkMessage, flags: u16) -> Result<Option<i32>, GatewayError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(GatewayError::Socket)?;
    socket.bind_auto().map_err(GatewayError::Socket)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(GatewayError::Socket)?;
    let mut header = NetlinkHeader::default();
    header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0).map_err(GatewayError::Socket)?;
    loop {
        let (answer, _) = socket.recv_from_full().map_err(GatewayError::Socket)?;
        let mut offset = 0;
        while offset < answer.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[offset..])
                .map_err(|e| GatewayError::Decode(e.to_string()))?;
            let len = reply.header.length as usize;
            if let NetlinkPayload::Error(e) = reply.payload {
                return Ok(e.code.map(|c| -c.get()));
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// Gives `lo` the address `gateway/32` in the current namespace; whether
/// it was added (false: it was there).
fn add_here(gateway: Ipv4Addr) -> Result<bool, GatewayError> {
    match request(RouteNetlinkMessage::NewAddress(message(gateway)), NLM_F_CREATE | NLM_F_EXCL)? {
        None => Ok(true),
        Some(libc::EEXIST) => Ok(false),
        Some(errno) => Err(GatewayError::Kernel { action: "adding", address: gateway, source: std::io::Error::from_raw_os_error(errno) }),
    }
}

/// Takes `gateway/32` off `lo` in the current namespace; whether it was
/// there.
fn remove_here(gateway: Ipv4Addr) -> Result<bool, GatewayError> {
    match request(RouteNetlinkMessage::DelAddress(message(gateway)), 0)? {
        None => Ok(true),
        Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ESRCH) => Ok(false),
        Some(errno) => Err(GatewayError::Kernel { action: "removing", address: gateway, source: std::io::Error::from_raw_os_error(errno) }),
    }
}

fn in_node<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T, GatewayError> + Send) -> Result<T, GatewayError> {
    crate::netns::in_netns(netns, f)
        .map_err(|source| GatewayError::Netns { path: netns.display().to_string(), source })?
}

/// Makes sure the node (network namespace `netns`) owns `gateway` on its
/// loopback device; whether it had to add it.
///
/// # Errors
///
/// The namespace cannot be joined, or the kernel refuses the address.
pub fn ensure(netns: &Path, gateway: Ipv4Addr) -> Result<bool, GatewayError> {
    in_node(netns, || add_here(gateway))
}

/// Takes `gateway` off the node's loopback device (the node's range
/// changed); whether it was there.
///
/// # Errors
///
/// As [`ensure`].
pub fn remove(netns: &Path, gateway: Ipv4Addr) -> Result<bool, GatewayError> {
    in_node(netns, || remove_here(gateway))
}
