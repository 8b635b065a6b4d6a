//! Compiles an incremental `nft` script (what [`super::Programmed::update`] emits) into one
//! nf_tables netlink batch (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`), the bytes `nft -f`
//! itself would send — without `nft`'s cache fill, two thirds of the CPU of an add-one at 10k
//! services (docs/benchmarks.md).
//!
//! Why the script text is the input: the text is already the tested reference (unit tests
//! compare it line by line, full syncs send it to `nft`), so compiling the very same lines keeps
//! one source of truth, and the integration test `tests/netlink.rs` checks that the kernel ends
//! up with the same ruleset either way. The compiler accepts exactly the statement forms
//! [`super::render_service`] and the incremental transactions produce and answers
//! [`EncodeError`] for anything else, so the caller falls back to `nft -f` and a
//! new rule form can never be half-encoded.
//!
//! Why hand-encoded: the maintained Rust crates do not cover these expressions (`rustables`
//! 0.9 has no `numgen`, `fib` or `dynset`; `nftnl` wraps the C libnftnl through `unsafe`,
//! which this workspace denies). nf_tables attributes are plain netlink TLVs; the encodings
//! below (expression attributes, register numbers, set flags, the `NFTA_SET_USERDATA` bytes
//! that tell `nft list` how to print a set) were taken from `nft --debug=netlink,mnl` of nft
//! 1.0.6 for each form, so `nft list` shows the same rules whichever path wrote them.

use std::net::IpAddr;

use super::Family;

// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
// linux/netfilter/nfnetlink.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
// linux/netfilter/nf_tables.h: messages
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
// attributes
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
// set flags
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
// nft's datatype ids (src/datatype.h), which `nft list` reads back from NFTA_SET_KEY_TYPE.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;
// verdicts
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
// registers: 0 is the verdict, 1.. the 16-byte ones, 8.. the 4-byte views of them.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;
// expression details
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_L4PROTO: u32 = 16;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_NG_RANDOM: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const RTN_LOCAL: u32 = 2;

/// `NFTA_SET_USERDATA` as nft 1.0.6 writes it (TLVs of libnftnl's `NFTNL_UDATA_SET_*`): key
/// byte order host (1) or big endian (2), data byte order, `typeof` descriptions.
const UDATA_NUMGEN_MAP: &[u8] = &[0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0];
const UDATA_NUMGEN_VMAP: &[u8] = &[
    0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 4, 8, 0, 4, 1, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0,
];
/// Key big endian, automerge, `typeof ip saddr` (payload expr 7, protocol 12, field 11).
const UDATA_SADDR_SET_V4: &[u8] = &[
    0, 4, 2, 0, 0, 0, 2, 4, 1, 0, 0, 0, 3, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 12, 0, 0, 0, 1, 4,
    11, 0, 0, 0,
];
/// The same for `typeof ip6 saddr` (protocol 13, field 8).
const UDATA_SADDR_SET_V6: &[u8] = &[
    0, 4, 2, 0, 0, 0, 2, 4, 1, 0, 0, 0, 3, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 13, 0, 0, 0, 1, 4, 8,
    0, 0, 0,
];
/// Key big endian: a named `type ipv4_addr` / `ipv6_addr` set.
const UDATA_ADDR_SET: &[u8] = &[0, 4, 2, 0, 0, 0];

/// Why a script cannot go over netlink (the caller then runs it through `nft`).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode `{line}`: {why}")]
pub struct EncodeError {
    pub line: String,
    pub why: String,
}

/// One encoded transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of the batch-begin message (commit errors are reported against it).
    pub begin_seq: u32,
    /// Sequence number of the last message, the one that asks for an acknowledgement.
    pub last_seq: u32,
    /// For error reports: (sequence number, index of the script line it came from).
    pub origins: Vec<(u32, usize)>,
    /// Messages between begin and end.
    pub messages: usize,
}

impl Batch {
    /// The script line a reply's sequence number points at.
    pub fn origin(&self, seq: u32) -> Option<usize> {
        self.origins
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .map(|i| self.origins[i].1)
    }
}

// ---- TLV writing -------------------------------------------------------------------------

fn align(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

fn put(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    align(b);
}

fn put_u32(b: &mut Vec<u8>, ty: u16, v: u32) {
    put(b, ty, &v.to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put(b, ty, &v);
}

fn nest(b: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let at = b.len();
    b.extend_from_slice(&[0; 4]);
    f(b);
    let len = (b.len() - at) as u16;
    b[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    b[at + 2..at + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
}

fn expr(b: &mut Vec<u8>, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
    nest(b, NFTA_LIST_ELEM, |b| {
        put_str(b, NFTA_EXPR_NAME, name);
        nest(b, NFTA_EXPR_DATA, f);
    });
}

fn data_value(b: &mut Vec<u8>, ty: u16, v: &[u8]) {
    nest(b, ty, |b| put(b, NFTA_DATA_VALUE, v));
}

/// A verdict: code and, for jump/goto, the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    code: i32,
    chain: Option<String>,
}

fn data_verdict(b: &mut Vec<u8>, ty: u16, v: &Verdict) {
    nest(b, ty, |b| {
        nest(b, NFTA_DATA_VERDICT, |b| {
            put_u32(b, NFTA_VERDICT_CODE, v.code as u32);
            if let Some(c) = &v.chain {
                put_str(b, NFTA_VERDICT_CHAIN, c);
            }
        })
    });
}

// ---- expressions -------------------------------------------------------------------------

fn payload(b: &mut Vec<u8>, base: u32, offset: u32, len: u32) {
    expr(b, "payload", |b| {
        put_u32(b, 1, REG_1); // NFTA_PAYLOAD_DREG
        put_u32(b, 2, base);
        put_u32(b, 3, offset);
        put_u32(b, 4, len);
    });
}

fn cmp(b: &mut Vec<u8>, op: u32, v: &[u8]) {
    expr(b, "cmp", |b| {
        put_u32(b, 1, REG_1); // NFTA_CMP_SREG
        put_u32(b, 2, op);
        data_value(b, 3, v);
    });
}

fn meta_l4proto(b: &mut Vec<u8>, proto: u8) {
    expr(b, "meta", |b| {
        put_u32(b, 2, NFT_META_L4PROTO); // NFTA_META_KEY
        put_u32(b, 1, REG_1); // NFTA_META_DREG
    });
    cmp(b, NFT_CMP_EQ, &[proto]);
}

fn immediate_verdict(b: &mut Vec<u8>, v: &Verdict) {
    expr(b, "immediate", |b| {
        put_u32(b, 1, REG_VERDICT);
        data_verdict(b, 2, v);
    });
}

fn immediate_value(b: &mut Vec<u8>, reg: u32, v: &[u8]) {
    expr(b, "immediate", |b| {
        put_u32(b, 1, reg);
        data_value(b, 2, v);
    });
}

fn lookup(b: &mut Vec<u8>, set: &str, set_id: Option<u32>, dreg: Option<u32>, inv: bool) {
    expr(b, "lookup", |b| {
        put_u32(b, 2, REG_1); // NFTA_LOOKUP_SREG
        if let Some(d) = dreg {
            put_u32(b, 3, d);
        }
        put_str(b, 1, set);
        if let Some(id) = set_id {
            put_u32(b, 4, id);
        }
        if inv {
            put_u32(b, 5, NFT_LOOKUP_F_INV);
        }
    });
}

fn numgen(b: &mut Vec<u8>, modulus: u32) {
    expr(b, "numgen", |b| {
        put_u32(b, 1, REG_1);
        put_u32(b, 2, modulus);
        put_u32(b, 3, NFT_NG_RANDOM);
        put_u32(b, 4, 0);
    });
}

fn dnat(b: &mut Vec<u8>, fam: Family, proto_reg: u32, flags: Option<u32>) {
    expr(b, "nat", |b| {
        put_u32(b, 1, NFT_NAT_DNAT);
        put_u32(b, 2, nfproto(fam) as u32);
        put_u32(b, 3, REG_1); // NFTA_NAT_REG_ADDR_MIN
        put_u32(b, 5, proto_reg); // NFTA_NAT_REG_PROTO_MIN
        if let Some(f) = flags {
            put_u32(b, 7, f);
        }
    });
}

// ---- values ------------------------------------------------------------------------------

fn nfproto(fam: Family) -> u8 {
    match fam {
        Family::V4 => 2,  // NFPROTO_IPV4
        Family::V6 => 10, // NFPROTO_IPV6
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn proto_number(s: &str) -> Option<u8> {
    match s {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

/// A port as a concatenation field: big endian, padded to the 4-byte register slot.
fn port_field(p: u16) -> [u8; 4] {
    let [h, l] = p.to_be_bytes();
    [h, l, 0, 0]
}

/// `addr` or `addr/len` → (address, prefix length).
fn parse_prefix(s: &str) -> Option<(IpAddr, u32)> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (s, None),
    };
    let ip: IpAddr = a.parse().ok()?;
    let full = if ip.is_ipv4() { 32 } else { 128 };
    let l = l.unwrap_or(full);
    (l <= full).then_some((ip, l))
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_u128(v: u128, v4: bool) -> Vec<u8> {
    if v4 {
        (v as u32).to_be_bytes().to_vec()
    } else {
        v.to_be_bytes().to_vec()
    }
}

fn parse_verdict(toks: &[&str]) -> Option<Verdict> {
    match toks {
        ["goto", c] => Some(Verdict {
            code: NFT_GOTO,
            chain: Some(c.to_string()),
        }),
        ["jump", c] => Some(Verdict {
            code: NFT_JUMP,
            chain: Some(c.to_string()),
        }),
        ["drop"] => Some(Verdict {
            code: NF_DROP,
            chain: None,
        }),
        ["accept"] => Some(Verdict {
            code: NF_ACCEPT,
            chain: None,
        }),
        ["return"] => Some(Verdict {
            code: NFT_RETURN,
            chain: None,
        }),
        _ => None,
    }
}

/// Splits on whitespace with `,` as a token of its own.
fn tokens(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for t in s.split_whitespace() {
        match t.strip_suffix(',') {
            Some(x) => {
                if !x.is_empty() {
                    out.push(x);
                }
                out.push(",");
            }
            None => out.push(t),
        }
    }
    out
}

// ---- sets --------------------------------------------------------------------------------

enum ElemData {
    Value(Vec<u8>),
    Verdict(Verdict),
}

struct Elem {
    interval_end: bool,
    key: Vec<u8>,
    data: Option<ElemData>,
}

/// An anonymous set or map a rule refers to, sent just before the rule.
struct AnonSet {
    id: u32,
    name: &'static str,
    flags: u32,
    key_type: u32,
    key_len: u32,
    /// (NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN) for maps.
    data: Option<(u32, u32)>,
    udata: &'static [u8],
    elems: Vec<Elem>,
}

fn put_elems(b: &mut Vec<u8>, elems: &[Elem]) {
    nest(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
        // libnftnl numbers the list entries 1, 2, …; the kernel ignores the type.
        for (i, e) in elems.iter().enumerate() {
            nest(b, (i + 1) as u16, |b| {
                if e.interval_end {
                    put_u32(b, NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                data_value(b, NFTA_SET_ELEM_KEY, &e.key);
                match &e.data {
                    Some(ElemData::Value(v)) => data_value(b, NFTA_SET_ELEM_DATA, v),
                    Some(ElemData::Verdict(v)) => data_verdict(b, NFTA_SET_ELEM_DATA, v),
                    None => {}
                }
            });
        }
    });
}

// ---- the compiler ------------------------------------------------------------------------

struct Compiler<'a> {
    fam: Family,
    table: &'a str,
    out: Vec<u8>,
    seq: u32,
    next_set_id: u32,
    last_at: usize,
    origins: Vec<(u32, usize)>,
    line_no: usize,
}

type Res<T> = Result<T, String>;

impl<'a> Compiler<'a> {
    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.out.len();
        self.out.extend_from_slice(&0u32.to_ne_bytes());
        self.out.extend_from_slice(&ty.to_ne_bytes());
        self.out.extend_from_slice(&flags.to_ne_bytes());
        self.out.extend_from_slice(&self.seq.to_ne_bytes());
        self.out.extend_from_slice(&0u32.to_ne_bytes());
        self.out.push(family);
        self.out.push(0); // NFNETLINK_V0
        self.out.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    fn finish(&mut self, at: usize) {
        let len = (self.out.len() - at) as u32;
        self.out[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// One nf_tables message whose attributes `body` writes (the table name comes first).
    fn msg(&mut self, ty: u16, flags: u16, body: impl FnOnce(&mut Vec<u8>)) {
        self.seq = self.seq.wrapping_add(1);
        let at = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | flags,
            nfproto(self.fam),
            0,
        );
        body(&mut self.out);
        self.finish(at);
        self.last_at = at;
        self.origins.push((self.seq, self.line_no));
    }

    fn obj<'t>(&self, toks: &[&'t str]) -> Res<&'t str> {
        match toks {
            [_, _, f, t, name, ..] if *f == self.fam.table_family() && *t == self.table => {
                Ok(*name)
            }
            _ => Err("not our table".into()),
        }
    }

    fn line(&mut self, line: &str) -> Res<()> {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let t = self.table;
        match toks.as_slice() {
            ["add", "chain", ..] if toks.len() == 5 => {
                let name = self.obj(&toks)?;
                self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
                    put_str(b, NFTA_CHAIN_TABLE, t);
                    put_str(b, NFTA_CHAIN_NAME, name);
                });
            }
            ["flush", "chain", ..] if toks.len() == 5 => {
                let name = self.obj(&toks)?;
                // DELRULE without a handle removes every rule of the chain: `flush chain`.
                self.msg(NFT_MSG_DELRULE, 0, |b| {
                    put_str(b, NFTA_RULE_TABLE, t);
                    put_str(b, NFTA_RULE_CHAIN, name);
                });
            }
            ["delete", "chain", ..] if toks.len() == 5 => {
                let name = self.obj(&toks)?;
                self.msg(NFT_MSG_DELCHAIN, 0, |b| {
                    put_str(b, NFTA_CHAIN_TABLE, t);
                    put_str(b, NFTA_CHAIN_NAME, name);
                });
            }
            ["delete", "set", ..] if toks.len() == 5 => {
                let name = self.obj(&toks)?;
                self.msg(NFT_MSG_DELSET, 0, |b| {
                    put_str(b, NFTA_SET_TABLE, t);
                    put_str(b, NFTA_SET_NAME, name);
                });
            }
            ["add", "set", ..] => {
                let name = self.obj(&toks)?;
                self.affinity_set(name, &toks[5..])?;
            }
            ["add", "rule", ..] if toks.len() > 5 => {
                let chain = self.obj(&toks)?;
                let rest = toks[5..].join(" ");
                self.rule(chain, &rest)?;
            }
            [verb @ ("add" | "delete"), "element", ..] => {
                let set = self.obj(&toks)?;
                let add = *verb == "add";
                let body = line
                    .split_once('{')
                    .and_then(|(_, r)| r.rsplit_once('}'))
                    .map(|(b, _)| b)
                    .ok_or("no element list")?;
                let mut elems = Vec::new();
                for item in body.split(',') {
                    let item = item.trim();
                    let (key, val) = match item.split_once(" : ") {
                        Some((k, v)) => (k, Some(v)),
                        None => (item, None),
                    };
                    let mut kb = Vec::new();
                    for part in key.split(" . ") {
                        let part = part.trim();
                        if let Ok(ip) = part.parse::<IpAddr>() {
                            kb.extend(ip_bytes(&ip));
                        } else if let Some(p) = proto_number(part) {
                            kb.extend([p, 0, 0, 0]);
                        } else if let Ok(port) = part.parse::<u16>() {
                            kb.extend(port_field(port));
                        } else {
                            return Err(format!("element key part {part:?}"));
                        }
                    }
                    let data = match (add, val) {
                        (true, Some(v)) => {
                            let vt: Vec<&str> = v.split_whitespace().collect();
                            Some(ElemData::Verdict(
                                parse_verdict(&vt).ok_or(format!("element value {v:?}"))?,
                            ))
                        }
                        _ => None,
                    };
                    elems.push(Elem {
                        interval_end: false,
                        key: kb,
                        data,
                    });
                }
                let (ty, flags) = if add {
                    (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
                } else {
                    (NFT_MSG_DELSETELEM, 0)
                };
                self.msg(ty, flags, |b| {
                    put_str(b, NFTA_SET_ELEM_LIST_TABLE, t);
                    put_str(b, NFTA_SET_ELEM_LIST_SET, set);
                    put_elems(b, &elems);
                });
            }
            _ => return Err("statement form not handled".into()),
        }
        Ok(())
    }

    /// `{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }`, the only named set a
    /// service declares (sessionAffinity).
    fn affinity_set(&mut self, name: &str, decl: &[&str]) -> Res<()> {
        let (key_type, key_len) = match (self.fam, decl) {
            (Family::V4, ["{", "type", "ipv4_addr", ..]) => (TYPE_IPADDR, 4),
            (Family::V6, ["{", "type", "ipv6_addr", ..]) => (TYPE_IP6ADDR, 16),
            _ => return Err("set type".into()),
        };
        let timeout_ms: u64 = match &decl[3..] {
            [";", "flags", "dynamic,timeout", ";", "timeout", t, ";", "}"] => {
                let secs: u64 = t
                    .strip_suffix('s')
                    .and_then(|s| s.parse().ok())
                    .ok_or("timeout")?;
                secs * 1000
            }
            _ => return Err("set declaration".into()),
        };
        let t = self.table;
        self.next_set_id += 1;
        let id = self.next_set_id;
        self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, |b| {
            put_str(b, NFTA_SET_TABLE, t);
            put_str(b, NFTA_SET_NAME, name);
            put_u32(b, NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
            put_u32(b, NFTA_SET_KEY_TYPE, key_type);
            put_u32(b, NFTA_SET_KEY_LEN, key_len);
            put_u32(b, NFTA_SET_ID, id);
            put(b, NFTA_SET_TIMEOUT, &timeout_ms.to_be_bytes());
            put(b, NFTA_SET_USERDATA, UDATA_ADDR_SET);
        });
        Ok(())
    }

    fn anon_set(&mut self, s: &AnonSet) {
        let t = self.table;
        self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, |b| {
            put_str(b, NFTA_SET_TABLE, t);
            put_str(b, NFTA_SET_NAME, s.name);
            put_u32(b, NFTA_SET_FLAGS, s.flags);
            put_u32(b, NFTA_SET_KEY_TYPE, s.key_type);
            put_u32(b, NFTA_SET_KEY_LEN, s.key_len);
            if let Some((ty, len)) = s.data {
                put_u32(b, NFTA_SET_DATA_TYPE, ty);
                put_u32(b, NFTA_SET_DATA_LEN, len);
            }
            put_u32(b, NFTA_SET_ID, s.id);
            nest(b, NFTA_SET_DESC, |b| {
                put_u32(b, NFTA_SET_DESC_SIZE, s.elems.len() as u32)
            });
            put(b, NFTA_SET_USERDATA, s.udata);
        });
        self.msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE, |b| {
            put_str(b, NFTA_SET_ELEM_LIST_TABLE, t);
            put_str(b, NFTA_SET_ELEM_LIST_SET, s.name);
            put_u32(b, NFTA_SET_ELEM_LIST_SET_ID, s.id);
            put_elems(b, &s.elems);
        });
    }

    fn new_set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id
    }

    /// Address match on `saddr`/`daddr`: nft loads only the prefix's whole bytes when the
    /// prefix ends on a byte boundary, else the whole address through a mask.
    fn addr_match(&self, b: &mut Vec<u8>, offset: u32, op: u32, ip: &IpAddr, plen: u32) -> Res<()> {
        if !self.fam.matches(ip) {
            return Err("address of the other family".into());
        }
        let bytes = ip_bytes(ip);
        let full = bytes.len() as u32 * 8;
        if plen == 0 {
            return Err("zero-length prefix".into());
        }
        if plen == full {
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, full / 8);
            cmp(b, op, &bytes);
        } else if plen.is_multiple_of(8) {
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, plen / 8);
            cmp(b, op, &bytes[..(plen / 8) as usize]);
        } else {
            let mask: Vec<u8> = (0..full / 8)
                .map(|i| {
                    let bits = plen.saturating_sub(i * 8).min(8);
                    (0xffu16 << (8 - bits)) as u8
                })
                .collect();
            let masked: Vec<u8> = bytes.iter().zip(&mask).map(|(a, m)| a & m).collect();
            payload(b, NFT_PAYLOAD_NETWORK_HEADER, offset, full / 8);
            expr(b, "bitwise", |b| {
                put_u32(b, 1, REG_1); // SREG
                put_u32(b, 2, REG_1); // DREG
                put_u32(b, 6, 0); // NFT_BITWISE_BOOL
                put_u32(b, 3, full / 8);
                data_value(b, 4, &mask);
                data_value(b, 5, &vec![0; mask.len()]);
            });
            cmp(b, op, &masked);
        }
        Ok(())
    }

    /// `{ cidr, cidr }` as nft's anonymous interval set: merged ranges as start elements and
    /// end-exclusive `interval end` elements, with a leading end element at 0 when the first
    /// range does not start there (nft's segtree encoding).
    fn interval_set(&mut self, items: &[&str]) -> Res<AnonSet> {
        let v4 = self.fam == Family::V4;
        let max: u128 = if v4 { u32::MAX as u128 } else { u128::MAX };
        let bits = if v4 { 32 } else { 128 };
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        for it in items {
            let (ip, plen) = parse_prefix(it).ok_or(format!("set element {it:?}"))?;
            if !self.fam.matches(&ip) {
                return Err("address of the other family".into());
            }
            let host = if plen == bits { 0 } else { max >> plen };
            let start = to_u128(&ip) & !host & max;
            ranges.push((start, start | host));
        }
        ranges.sort();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (s, e) in ranges {
            match merged.last_mut() {
                Some((_, le)) if *le == max || s <= *le + 1 => *le = (*le).max(e),
                _ => merged.push((s, e)),
            }
        }
        let mut elems = Vec::new();
        if merged.first().is_some_and(|(s, _)| *s != 0) {
            elems.push(Elem {
                interval_end: true,
                key: from_u128(0, v4),
                data: None,
            });
        }
        for (s, e) in merged {
            elems.push(Elem {
                interval_end: false,
                key: from_u128(s, v4),
                data: None,
            });
            if e != max {
                elems.push(Elem {
                    interval_end: true,
                    key: from_u128(e + 1, v4),
                    data: None,
                });
            }
        }
        let (key_type, udata) = if v4 {
            (TYPE_IPADDR, UDATA_SADDR_SET_V4)
        } else {
            (TYPE_IP6ADDR, UDATA_SADDR_SET_V6)
        };
        Ok(AnonSet {
            id: self.new_set_id(),
            name: "__set%d",
            flags: NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL,
            key_type,
            key_len: bits / 8,
            data: None,
            udata,
            elems,
        })
    }

    /// One rule of a service chain, statement by statement.
    fn rule(&mut self, chain: &str, text: &str) -> Res<()> {
        let toks = tokens(text);
        let fam = self.fam;
        let kw = fam.kw();
        let (saddr_off, daddr_off) = match fam {
            Family::V4 => (12, 16),
            Family::V6 => (8, 24),
        };
        let mut e: Vec<u8> = Vec::new();
        let mut sets: Vec<AnonSet> = Vec::new();
        let mut i = 0;
        let at = |i: usize| toks.get(i).copied().unwrap_or("");
        // Tokens up to the matching `}`, starting after a `{` at `open`.
        let braced = |open: usize| -> Res<(Vec<&str>, usize)> {
            if at(open) != "{" {
                return Err("expected {".into());
            }
            let close = toks[open..]
                .iter()
                .position(|t| *t == "}")
                .ok_or("unclosed {")?
                + open;
            Ok((toks[open + 1..close].to_vec(), close + 1))
        };
        while i < toks.len() {
            match at(i) {
                k if k == kw && matches!(at(i + 1), "saddr" | "daddr") => {
                    let off = if at(i + 1) == "saddr" {
                        saddr_off
                    } else {
                        daddr_off
                    };
                    i += 2;
                    let mut op = NFT_CMP_EQ;
                    if at(i) == "!=" {
                        op = NFT_CMP_NEQ;
                        i += 1;
                    }
                    let v = at(i);
                    if let Some(set) = v.strip_prefix('@') {
                        payload(
                            &mut e,
                            NFT_PAYLOAD_NETWORK_HEADER,
                            off,
                            if fam == Family::V4 { 4 } else { 16 },
                        );
                        lookup(&mut e, set, None, None, op == NFT_CMP_NEQ);
                        i += 1;
                    } else if v == "{" {
                        if off != saddr_off {
                            return Err("anonymous set on daddr".into());
                        }
                        let (items, next) = braced(i)?;
                        let items: Vec<&str> = items.into_iter().filter(|t| *t != ",").collect();
                        let s = self.interval_set(&items)?;
                        payload(&mut e, NFT_PAYLOAD_NETWORK_HEADER, off, s.key_len);
                        lookup(&mut e, s.name, Some(s.id), None, op == NFT_CMP_NEQ);
                        sets.push(s);
                        i = next;
                    } else {
                        let (ip, plen) = parse_prefix(v).ok_or(format!("address {v:?}"))?;
                        self.addr_match(&mut e, off, op, &ip, plen)?;
                        i += 1;
                    }
                }
                p if proto_number(p).is_some() && at(i + 1) == "dport" => {
                    let port: u16 = at(i + 2).parse().map_err(|_| "port")?;
                    meta_l4proto(&mut e, proto_number(p).unwrap_or_default());
                    payload(&mut e, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                    cmp(&mut e, NFT_CMP_EQ, &port.to_be_bytes());
                    i += 3;
                }
                "meta" if at(i + 1) == "l4proto" => {
                    let p = proto_number(at(i + 2)).ok_or("l4proto")?;
                    meta_l4proto(&mut e, p);
                    i += 3;
                }
                "fib" if at(i + 1) == "saddr" && at(i + 2) == "type" && at(i + 3) == "local" => {
                    expr(&mut e, "fib", |b| {
                        put_u32(b, 1, REG_1);
                        put_u32(b, 2, NFT_FIB_RESULT_ADDRTYPE);
                        put_u32(b, 3, NFTA_FIB_F_SADDR);
                    });
                    cmp(&mut e, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
                    i += 4;
                }
                "numgen" if at(i + 1) == "random" && at(i + 2) == "mod" && at(i + 4) == "vmap" => {
                    let n: u32 = at(i + 3).parse().map_err(|_| "modulus")?;
                    let (arms, next) = braced(i + 5)?;
                    let mut elems = Vec::new();
                    for arm in arms.split(|t| *t == ",") {
                        let [k, ":", verdict @ ..] = arm else {
                            return Err("vmap arm".into());
                        };
                        let k: u32 = k.parse().map_err(|_| "vmap key")?;
                        elems.push(Elem {
                            interval_end: false,
                            key: k.to_ne_bytes().to_vec(),
                            data: Some(ElemData::Verdict(
                                parse_verdict(verdict).ok_or("vmap verdict")?,
                            )),
                        });
                    }
                    let s = AnonSet {
                        id: self.new_set_id(),
                        name: "__map%d",
                        flags: NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
                        key_type: TYPE_INTEGER,
                        key_len: 4,
                        data: Some((NFT_DATA_VERDICT, 0)),
                        udata: UDATA_NUMGEN_VMAP,
                        elems,
                    };
                    numgen(&mut e, n);
                    lookup(&mut e, s.name, Some(s.id), Some(REG_VERDICT), false);
                    sets.push(s);
                    i = next;
                }
                "dnat" if at(i + 1) == "to" && at(i + 2) == "numgen" => {
                    if !(at(i + 3) == "random" && at(i + 4) == "mod" && at(i + 6) == "map") {
                        return Err("dnat numgen form".into());
                    }
                    let n: u32 = at(i + 5).parse().map_err(|_| "modulus")?;
                    let (arms, next) = braced(i + 7)?;
                    let mut elems = Vec::new();
                    for arm in arms.split(|t| *t == ",") {
                        let [k, ":", a, ".", p] = arm else {
                            return Err("dnat map arm".into());
                        };
                        let k: u32 = k.parse().map_err(|_| "map key")?;
                        let ip: IpAddr = a.parse().map_err(|_| "map address")?;
                        if !fam.matches(&ip) {
                            return Err("address of the other family".into());
                        }
                        let port: u16 = p.parse().map_err(|_| "map port")?;
                        let mut v = ip_bytes(&ip);
                        v.extend(port_field(port));
                        elems.push(Elem {
                            interval_end: false,
                            key: k.to_ne_bytes().to_vec(),
                            data: Some(ElemData::Value(v)),
                        });
                    }
                    let (addr_type, alen, proto_reg) = match fam {
                        Family::V4 => (TYPE_IPADDR, 4, REG32_01),
                        Family::V6 => (TYPE_IP6ADDR, 16, REG_2),
                    };
                    let s = AnonSet {
                        id: self.new_set_id(),
                        name: "__map%d",
                        flags: NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
                        key_type: TYPE_INTEGER,
                        key_len: 4,
                        data: Some(((addr_type << TYPE_BITS) | TYPE_INET_SERVICE, alen + 4)),
                        udata: UDATA_NUMGEN_MAP,
                        elems,
                    };
                    numgen(&mut e, n);
                    lookup(&mut e, s.name, Some(s.id), Some(REG_1), false);
                    dnat(&mut e, fam, proto_reg, None);
                    sets.push(s);
                    i = next;
                }
                "dnat" if at(i + 1) == "to" => {
                    let target = at(i + 2);
                    let (a, p) = match target.strip_prefix('[') {
                        Some(r) => r.split_once("]:").ok_or("dnat target")?,
                        None => target.rsplit_once(':').ok_or("dnat target")?,
                    };
                    let ip: IpAddr = a.parse().map_err(|_| "dnat address")?;
                    if !fam.matches(&ip) {
                        return Err("address of the other family".into());
                    }
                    let port: u16 = p.parse().map_err(|_| "dnat port")?;
                    immediate_value(&mut e, REG_1, &ip_bytes(&ip));
                    immediate_value(&mut e, REG_2, &port.to_be_bytes());
                    dnat(&mut e, fam, REG_2, Some(NF_NAT_RANGE_PROTO_SPECIFIED));
                    i += 3;
                }
                "update" if at(i + 1).starts_with('@') => {
                    let set = &at(i + 1)[1..];
                    if !(at(i + 2) == "{"
                        && at(i + 3) == kw
                        && at(i + 4) == "saddr"
                        && at(i + 5) == "}")
                    {
                        return Err("update form".into());
                    }
                    payload(
                        &mut e,
                        NFT_PAYLOAD_NETWORK_HEADER,
                        saddr_off,
                        if fam == Family::V4 { 4 } else { 16 },
                    );
                    expr(&mut e, "dynset", |b| {
                        put_str(b, 1, set); // NFTA_DYNSET_SET_NAME
                        put_u32(b, 3, NFT_DYNSET_OP_UPDATE);
                        put_u32(b, 4, REG_1); // NFTA_DYNSET_SREG_KEY
                    });
                    i += 6;
                }
                "jump" | "goto" => {
                    let v = parse_verdict(&[at(i), at(i + 1)]).ok_or("verdict")?;
                    immediate_verdict(&mut e, &v);
                    i += 2;
                }
                v @ ("drop" | "accept" | "return") => {
                    let v = parse_verdict(&[v]).ok_or("verdict")?;
                    immediate_verdict(&mut e, &v);
                    i += 1;
                }
                other => return Err(format!("statement at {other:?}")),
            }
        }
        for s in &sets {
            self.anon_set(s);
        }
        let t = self.table;
        self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            put_str(b, NFTA_RULE_TABLE, t);
            put_str(b, NFTA_RULE_CHAIN, chain);
            nest(b, NFTA_RULE_EXPRESSIONS, |b| b.extend_from_slice(&e));
        });
        Ok(())
    }
}

/// Compiles `script` (lines of one table, as [`super::Programmed::update`] writes them) into
/// one batch whose messages are numbered from `seq + 1`. Empty script → empty batch.
pub fn compile(fam: Family, table: &str, script: &str, seq: u32) -> Result<Batch, EncodeError> {
    let mut c = Compiler {
        fam,
        table,
        out: Vec::with_capacity(script.len() * 2),
        seq,
        next_set_id: 0,
        last_at: 0,
        origins: Vec::new(),
        line_no: 0,
    };
    let begin = c.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
    c.finish(begin);
    let begin_seq = seq;
    for (n, line) in script.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        c.line_no = n;
        c.line(line).map_err(|why| EncodeError {
            line: line.chars().take(300).collect(),
            why,
        })?;
    }
    if c.origins.is_empty() {
        return Ok(Batch::default());
    }
    // Only the last message asks for an acknowledgement: the kernel handles the batch
    // synchronously inside sendmsg and reports every failing message anyway, so one ack
    // says "done" without a reply per element.
    let at = c.last_at + 6;
    let flags = u16::from_ne_bytes([c.out[at], c.out[at + 1]]) | NLM_F_ACK;
    c.out[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
    let last_seq = c.seq;
    c.seq = c.seq.wrapping_add(1);
    let end = c.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
    c.finish(end);
    let messages = c.origins.len();
    Ok(Batch {
        bytes: c.out,
        begin_seq,
        last_seq,
        origins: c.origins,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
            out.push((ty, b[4..len].to_vec()));
            b = &b[(len + 3) & !3..];
        }
        out
    }

    #[test]
    fn batch_framing_and_ack_on_last_message() {
        let s = "add chain ip kelson-proxy c1\nadd rule ip kelson-proxy c1 goto c2\n";
        let b = compile(Family::V4, "kelson-proxy", s, 100).unwrap();
        assert_eq!(b.messages, 2);
        assert_eq!((b.begin_seq, b.last_seq), (100, 102));
        // begin, chain, rule, end
        let mut off = 0;
        let mut seen = Vec::new();
        while off < b.bytes.len() {
            let len = u32::from_ne_bytes(b.bytes[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([b.bytes[off + 4], b.bytes[off + 5]]);
            let flags = u16::from_ne_bytes([b.bytes[off + 6], b.bytes[off + 7]]);
            seen.push((ty, flags & NLM_F_ACK != 0));
            off += len;
        }
        assert_eq!(
            seen,
            vec![
                (NFNL_MSG_BATCH_BEGIN, false),
                ((10 << 8) | NFT_MSG_NEWCHAIN, false),
                ((10 << 8) | NFT_MSG_NEWRULE, true),
                (NFNL_MSG_BATCH_END, false)
            ]
        );
        assert_eq!(b.origin(102), Some(1));
    }

    #[test]
    fn element_keys_are_padded_concatenations() {
        let s = "add element ip kelson-proxy service-ips { 10.0.0.1 . tcp . 80 : goto svc }";
        let b = compile(Family::V4, "kelson-proxy", s, 0).unwrap();
        // Exactly the bytes nft 1.0.6 sends for this element (nft --debug=mnl).
        let key = [10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0];
        assert!(b.bytes.windows(key.len()).any(|w| w == key));
        let msg = &b.bytes[20..];
        let mlen = u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize;
        let a = attrs(&msg[20..mlen]);
        assert_eq!(a[0], (NFTA_SET_ELEM_LIST_TABLE, b"kelson-proxy\0".to_vec()));
        assert_eq!(a[1], (NFTA_SET_ELEM_LIST_SET, b"service-ips\0".to_vec()));
    }

    #[test]
    fn unknown_forms_are_refused_not_guessed() {
        for s in [
            "add rule ip kelson-proxy c masquerade fully-random",
            "add rule ip kelson-proxy c ip daddr { 10.0.0.1, 10.0.0.2 } goto x",
            "add chain ip kelson-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }",
            "add rule ip6 kelson-proxy c goto x",
            "add rule ip kelson-proxy c ip6 saddr ::1 goto x",
        ] {
            assert!(compile(Family::V4, "kelson-proxy", s, 0).is_err(), "{s}");
        }
    }

    #[test]
    fn interval_sets_merge_and_mark_ends() {
        let mut c = Compiler {
            fam: Family::V4,
            table: "t",
            out: Vec::new(),
            seq: 0,
            next_set_id: 0,
            last_at: 0,
            origins: Vec::new(),
            line_no: 0,
        };
        let s = c
            .interval_set(&["192.168.0.0/16", "10.0.0.0/8", "11.0.0.0/8"])
            .unwrap();
        let got: Vec<(bool, Vec<u8>)> = s
            .elems
            .iter()
            .map(|e| (e.interval_end, e.key.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (true, vec![0, 0, 0, 0]),
                (false, vec![10, 0, 0, 0]),
                (true, vec![12, 0, 0, 0]),
                (false, vec![192, 168, 0, 0]),
                (true, vec![192, 169, 0, 0]),
            ]
        );
    }
}
