//! The simulated network between the SFU and the peers: a downlink of limited rate, a policer,
//! random loss; a link cut, a packet held back; a peer moving to new addresses, renominating a
//! pair or restarting ICE.

use super::*;

/// A link of limited rate with a drop-tail queue: a datagram leaves when the ones before it
/// have been serialised, and is dropped if it would wait longer than the queue holds.
pub(super) struct Bottleneck {
    pub(super) bits_per_second: f64,
    pub(super) max_queueing: Duration,
    /// When the link finishes sending what it holds.
    pub(super) free_at: Instant,
    /// Datagrams in flight with the time each reaches the peer.
    pub(super) queue: VecDeque<(Instant, SocketAddr, bytes::BytesMut)>,
    /// Drops this fraction of the datagrams at random (a radio link), whatever the rate.
    pub(super) loss: f64,
    pub(super) rng: StdRng,
}

impl Bottleneck {
    pub(super) fn new(
        now: Instant,
        bits_per_second: f64,
        max_queueing: Duration,
        loss: f64,
    ) -> Self {
        Self {
            bits_per_second,
            max_queueing,
            free_at: now,
            queue: VecDeque::new(),
            loss,
            rng: StdRng::seed_from_u64(12),
        }
    }

    pub(super) fn enqueue(&mut self, now: Instant, to: SocketAddr, bytes: bytes::BytesMut) {
        use rand::RngExt;
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let start = self.free_at.max(now);
        if start.duration_since(now) > self.max_queueing {
            return;
        }
        let serialise = Duration::from_secs_f64(bytes.len() as f64 * 8.0 / self.bits_per_second);
        self.free_at = start + serialise;
        self.queue.push_back((self.free_at, to, bytes));
    }
}

impl World {
    /// Everything the SFU sends `name` from now on crosses a link of `bits_per_second` with
    /// 200 ms of queue (drop-tail), and reaches it when the link has serialised it.
    pub fn limit_downlink(&mut self, name: &str, bits_per_second: f64) {
        let now = self.now;
        self.peer_entry(name).downlink = Some(Bottleneck::new(
            now,
            bits_per_second,
            Duration::from_millis(200),
            0.0,
        ));
    }

    /// Everything the SFU sends `name` from now on crosses a policer of `bits_per_second`
    /// (nftables `limit rate ... drop`, an operator's shaper): what exceeds the rate is dropped
    /// at once, almost nothing queues, so no delay grows before the loss.
    pub fn police_downlink(&mut self, name: &str, bits_per_second: f64) {
        let now = self.now;
        self.peer_entry(name).downlink = Some(Bottleneck::new(
            now,
            bits_per_second,
            Duration::from_millis(10),
            0.0,
        ));
    }

    /// `name` loses `fraction` of what the SFU sends it, at random (a radio link), at any rate.
    pub fn lose_downlink(&mut self, name: &str, fraction: f64) {
        let now = self.now;
        self.peer_entry(name).downlink = Some(Bottleneck::new(
            now,
            1e9,
            Duration::from_millis(200),
            fraction,
        ));
    }

    /// Lifts [`Self::limit_downlink`]: `name`'s link carries whatever it is sent again.
    pub fn unlimit_downlink(&mut self, name: &str) {
        self.peer_entry(name).downlink = None;
    }

    /// Holds back the packet `name` sends on `track` `ahead` packets from now on its way to
    /// the SFU (lost on the publisher's leg) until [`World::release`]; returns its sequence
    /// number.
    pub fn withhold(&mut self, name: &str, track: &str, ahead: u16) -> u16 {
        let seq = self.track_mut(name, track).next_seq.wrapping_add(ahead);
        self.peer_entry(name).withhold_seq = Some(seq);
        seq
    }

    /// Delivers what the link held back from `name` ([`World::withhold`]) now, datagram for
    /// datagram: what a browser without RTX resends when NACKed, the same packet under the same
    /// SSRC, sequence number and SRTP index.
    pub fn release(&mut self, name: &str) {
        let now = self.now;
        let peer = self.peer_entry(name);
        peer.withhold_seq = None;
        let (addr, held) = (peer.publish_addr, std::mem::take(&mut peer.withheld));
        assert!(!held.is_empty(), "nothing of {name} was held back");
        for datagram in held {
            self.shard
                .handle_receive(now, TransportProtocol::UDP, addr, SFU, &datagram);
        }
        self.settle();
    }

    /// Nothing crosses `name`'s link from now on, either way: it vanished from the network
    /// without leaving.
    pub fn cut(&mut self, name: &str) {
        self.peer_entry(name).link_up = false;
    }

    /// `name`'s device changes networks (Wi-Fi to mobile): its connections now send from new
    /// addresses, with a host candidate there, and nothing reaches the old ones.
    pub fn change_network(&mut self, name: &str) {
        let port = self.next_port;
        self.next_port += 2;
        let peer = self.peer_entry(name);
        peer.publish_addr.set_port(port);
        peer.subscribe_addr.set_port(port + 1);
        let addrs = [peer.publish_addr, peer.subscribe_addr];
        for (client, addr) in [peer.publish.as_mut(), peer.subscribe.as_mut()]
            .into_iter()
            .zip(addrs)
        {
            if let Some(client) = client {
                client.addr = addr;
                crate::add_host_candidates(&mut client.rtc, &[addr]).expect("host candidate");
            }
        }
    }

    /// What Chromium does when it moves a connection to another candidate pair without an ICE
    /// restart (its first pair broke, or a better one validated): it nominates the new pair,
    /// a binding request with USE-CANDIDATE from the connection's current address. The first
    /// request makes the SFU check the pair (the client answers the check), the second
    /// nominates a pair that has succeeded.
    pub fn renominate(&mut self, name: &str, kind: PcKind) {
        for _ in 0..2 {
            let peer = self.peer(name);
            let client = match kind {
                PcKind::Publish => peer.publish.as_ref(),
                PcKind::Subscribe => peer.subscribe.as_ref(),
            }
            .unwrap_or_else(|| panic!("{name} has no {} connection", kind.as_str()));
            let sfu_sdp = client
                .rtc
                .remote_description()
                .expect("negotiated")
                .sdp
                .clone();
            let own_sdp = client
                .rtc
                .local_description()
                .expect("negotiated")
                .sdp
                .clone();
            let attr = |sdp: &str, key: &str| {
                sdp.lines()
                    .find_map(|l| l.trim_end().strip_prefix(key).map(str::to_owned))
                    .unwrap_or_else(|| panic!("no {key}"))
            };
            let user = format!(
                "{}:{}",
                attr(&sfu_sdp, "a=ice-ufrag:"),
                attr(&own_sdp, "a=ice-ufrag:")
            );
            let request = nominating_request(&user, &attr(&sfu_sdp, "a=ice-pwd:"));
            let from = client.addr;
            self.shard
                .handle_receive(self.now, TransportProtocol::UDP, from, SFU, &request);
            self.settle();
        }
    }

    /// What a browser does when its network changed: it re-offers its publish connection with
    /// new ICE credentials and asks the SFU to restart its subscribe connection. Returns the
    /// SFU's answers to the publish offer before and to the re-offer.
    pub fn restart_ice(&mut self, name: &str) -> (String, String) {
        let client = self
            .peers
            .get_mut(name)
            .and_then(|p| p.publish.as_mut())
            .expect("a publisher");
        let before = client
            .rtc
            .remote_description()
            .expect("answered")
            .sdp
            .clone();
        client.rtc.restart_ice();
        let answer = self.offer_publish(name);
        self.command(|reply| Command::RestartIce {
            room: ROOM.into(),
            participant: name.into(),
            reply,
        })
        .unwrap_or_else(|e| panic!("{name} restarts its subscribe connection: {e}"));
        self.settle();
        (before, answer)
    }
}

/// A STUN binding request as a controlling browser nominates a pair with: USERNAME, PRIORITY,
/// ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY keyed with the SFU's password,
/// FINGERPRINT.
fn nominating_request(user: &str, pwd: &str) -> Vec<u8> {
    use rtc::stun::attributes::{ATTR_USERNAME, AttrType};
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;

    /// A raw attribute (type, value).
    struct Raw(u16, Vec<u8>);
    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> rtc::shared::error::Result<()> {
            m.add(AttrType(self.0), &self.1);
            Ok(())
        }
    }
    const PRIORITY: u16 = 0x0024;
    const USE_CANDIDATE: u16 = 0x0025;
    const ICE_CONTROLLING: u16 = 0x802A;
    let crypto = rtc::crypto::default_provider().expect("crypto provider");
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, user.to_owned())),
        Box::new(Raw(PRIORITY, 1_853_817_087u32.to_be_bytes().to_vec())),
        Box::new(Raw(ICE_CONTROLLING, 7u64.to_be_bytes().to_vec())),
        Box::new(Raw(USE_CANDIDATE, Vec::new())),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            crypto.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    let mut m = Message::new();
    m.build(&setters).expect("binding request");
    m.raw
}
