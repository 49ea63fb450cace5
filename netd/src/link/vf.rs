//! SR-IOV: setting a VF's MAC and VLAN through its PF, as
//! `ip link set PF vf N mac M vlan V` does: an RTM_SETLINK on the PF with
//! IFLA_VFINFO_LIST { IFLA_VF_INFO { IFLA_VF_MAC, IFLA_VF_VLAN } }.
//!
//! The message is built in one place, [`vf_config_message`], so the bytes
//! the tests check are the bytes the kernel gets; [`vf_config_bytes`] is its
//! wire form (also what the daemon's test-only VF log records).

use anyhow::Result;
use futures::StreamExt;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoVlan},
};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};

use super::Netlink;
use super::error::NetlinkError;

/// What one VF gets: MAC (all zero clears it) and VLAN (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfConfig {
    pub pf_index: u32,
    /// The VF's number on its PF (the N of sysfs `virtfnN`).
    pub vf: u32,
    pub mac: [u8; 6],
    pub vlan: u16,
}

impl VfConfig {
    /// The VF's settings wiped, for a VF going back to the pool.
    pub fn cleared(pf_index: u32, vf: u32) -> VfConfig {
        VfConfig {
            pf_index,
            vf,
            mac: [0; 6],
            vlan: 0,
        }
    }
}

/// The RTM_SETLINK request (header flags REQUEST|ACK, sequence 0: the
/// connection numbers it when sending).
pub fn vf_config_message(c: &VfConfig) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut link = LinkMessage::default();
    link.header.index = c.pf_index;
    link.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![
            VfInfo::Mac(VfInfoMac::new(c.vf, &c.mac)),
            // qos 0: no 802.1p priority.
            VfInfo::Vlan(VfInfoVlan::new(c.vf, u32::from(c.vlan), 0)),
        ])]));
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::SetLink(link));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.finalize();
    msg
}

/// The message as it goes on the wire.
pub fn vf_config_bytes(c: &VfConfig) -> Vec<u8> {
    let msg = vf_config_message(c);
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

impl Netlink {
    /// Sets a VF's MAC and VLAN through its PF. A device without SR-IOV
    /// answers EOPNOTSUPP.
    pub async fn set_vf(&self, c: &VfConfig) -> Result<()> {
        self.send_raw_setlink(vf_config_message(c), || {
            format!(
                "setting VF {} of {} to MAC {} VLAN {}",
                c.vf,
                super::describe(c.pf_index),
                c.mac.map(|b| format!("{b:02x}")).join(":"),
                c.vlan
            )
        })
        .await
    }

    /// Sends a prepared request and waits for the kernel's acknowledgement.
    pub(crate) async fn send_raw_setlink(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
        what: impl Fn() -> String,
    ) -> Result<()> {
        let mut handle = self.handle.clone();
        let mut resp = handle
            .request(msg)
            .map_err(|e| anyhow::Error::new(NetlinkError::new(what(), e)))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && e.code.is_some()
            {
                return Err(anyhow::Error::new(NetlinkError::new(
                    what(),
                    rtnetlink::Error::NetlinkError(e),
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rtnetlink layout written out by hand from the kernel's uapi
    /// headers (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h), all
    /// little-endian on this machine's architectures.
    fn expected(pf_index: u32, vf: u32, mac: [u8; 6], vlan: u16) -> Vec<u8> {
        let mut b = Vec::new();
        let u16le = |b: &mut Vec<u8>, v: u16| b.extend_from_slice(&v.to_le_bytes());
        let u32le = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        // struct nlmsghdr
        u32le(&mut b, 96); // nlmsg_len: 16 + 16 + 64
        u16le(&mut b, 19); // RTM_SETLINK
        u16le(&mut b, 0x1 | 0x4); // NLM_F_REQUEST | NLM_F_ACK
        u32le(&mut b, 0); // seq
        u32le(&mut b, 0); // pid
        // struct ifinfomsg
        b.push(0); // ifi_family AF_UNSPEC
        b.push(0); // pad
        u16le(&mut b, 0); // ifi_type
        u32le(&mut b, pf_index); // ifi_index
        u32le(&mut b, 0); // ifi_flags
        u32le(&mut b, 0); // ifi_change
        // IFLA_VFINFO_LIST (22), nested
        u16le(&mut b, 64);
        u16le(&mut b, 22);
        // IFLA_VF_INFO (1), nested
        u16le(&mut b, 60);
        u16le(&mut b, 1);
        // IFLA_VF_MAC (1): struct ifla_vf_mac { __u32 vf; __u8 mac[32]; }
        u16le(&mut b, 40);
        u16le(&mut b, 1);
        u32le(&mut b, vf);
        b.extend_from_slice(&mac);
        b.extend_from_slice(&[0u8; 26]);
        // IFLA_VF_VLAN (2): struct ifla_vf_vlan { __u32 vf, vlan, qos; }
        u16le(&mut b, 16);
        u16le(&mut b, 2);
        u32le(&mut b, vf);
        u32le(&mut b, u32::from(vlan));
        u32le(&mut b, 0);
        b
    }

    #[test]
    fn vf_mac_and_vlan_message_matches_the_rtnetlink_layout() {
        let c = VfConfig {
            pf_index: 7,
            vf: 3,
            mac: [0x52, 0x54, 0x00, 0xba, 0x9e, 0x05],
            vlan: 42,
        };
        let got = vf_config_bytes(&c);
        assert_eq!(got.len(), 96);
        assert_eq!(got, expected(7, 3, c.mac, 42), "\n{got:02x?}");
        // A large PF index and the top VLAN land in the right bytes.
        let c = VfConfig {
            pf_index: 0x01020304,
            vf: 63,
            mac: [0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54],
            vlan: 4094,
        };
        assert_eq!(vf_config_bytes(&c), expected(0x01020304, 63, c.mac, 4094));
        assert_eq!(&vf_config_bytes(&c)[20..24], &[4, 3, 2, 1]);
    }

    #[test]
    fn clearing_sends_a_zero_mac_and_no_vlan() {
        let got = vf_config_bytes(&VfConfig::cleared(9, 2));
        assert_eq!(got, expected(9, 2, [0; 6], 0));
    }
}
