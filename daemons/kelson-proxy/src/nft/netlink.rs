//! A `NETLINK_NETFILTER` socket that commits [`Batch`]es (see [`super::batch`]).
//!
//! The kernel processes a batch synchronously inside `sendmsg`: every message is checked,
//! then the whole transaction commits or aborts, and the replies (an error per failing
//! message, a commit error against the batch-begin message, the acknowledgement the last
//! message asked for) are queued before `send` returns. So a transaction is one `send` and
//! reading until the reply for the last message; nothing is left pending between syncs.
//! Calls block (for a few ms at 10k services: the kernel's table validation); the proxier's
//! sync task is the only user.
//!
//! The socket is made inside the network namespace the proxy programs: for tests and the
//! benchmark, which program a namespace they created, a short-lived thread enters it with
//! `setns` and opens the socket there (a socket stays in the namespace it was made in).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::batch::Batch;

const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netfilter netlink socket{}: {source}", .netns.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Open {
        netns: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op}: {errno}")]
    Io { op: &'static str, errno: Errno },
    /// The kernel refused the transaction: (script line or "commit", errno) per failure.
    #[error("transaction refused: {}", .0.iter().map(|(w, e)| format!("{w}: {e}")).collect::<Vec<_>>().join("; "))]
    Refused(Vec<(String, Errno)>),
    #[error("no acknowledgement for the batch")]
    NoAck,
}

/// An open `NETLINK_NETFILTER` socket.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

fn open_here() -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    // Room for the error replies of a large refused batch; best effort (needs CAP_NET_ADMIN,
    // which programming nftables needs anyway).
    let _ = socket::setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20));
    // A bound on a reply that never comes (it always does for a well-formed batch).
    let _ = socket::setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    );
    Ok(fd)
}

impl Socket {
    /// Opens the socket in this process's network namespace, or in `netns` (a path such as
    /// `/run/netns/NAME`).
    pub fn open(netns: Option<&Path>) -> Result<Socket, NetlinkError> {
        let err = |source: std::io::Error| NetlinkError::Open {
            netns: netns.map(Path::to_path_buf),
            source,
        };
        let fd = match netns {
            None => open_here().map_err(|e| err(e.into()))?,
            Some(p) => {
                let p = p.to_path_buf();
                std::thread::spawn(move || -> std::io::Result<OwnedFd> {
                    let ns = std::fs::File::open(&p)?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    Ok(open_here()?)
                })
                .join()
                .map_err(|_| err(std::io::Error::other("netns thread panicked")))?
                .map_err(&err)?
            }
        };
        Ok(Socket { fd, seq: 1 })
    }

    /// The sequence number the next batch should start at (see [`super::batch::compile`]).
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Sends `batch` and waits for its outcome. `lines` are the script lines the batch was
    /// compiled from, for error messages.
    pub fn commit(&mut self, batch: &Batch, lines: &[&str]) -> Result<(), NetlinkError> {
        if batch.messages == 0 {
            return Ok(());
        }
        self.seq = batch.last_seq.wrapping_add(2);
        let fd = self.fd.as_raw_fd();
        let mut buf = vec![0u8; 64 * 1024];
        // Replies left over from an earlier, interrupted exchange would be misread.
        while socket::recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT).is_ok_and(|n| n > 0) {}
        // The whole batch must arrive as one message (the kernel aborts a batch without its
        // end), and netlink refuses a send larger than the send buffer.
        let want = batch.bytes.len() + 4096;
        if socket::getsockopt(&self.fd, sockopt::SndBuf).is_ok_and(|s| s < want) {
            socket::setsockopt(&self.fd, sockopt::SndBufForce, &want).map_err(|errno| {
                NetlinkError::Io {
                    op: "SO_SNDBUFFORCE",
                    errno,
                }
            })?;
        }
        let n = socket::send(fd, &batch.bytes, MsgFlags::empty())
            .map_err(|errno| NetlinkError::Io { op: "send", errno })?;
        if n != batch.bytes.len() {
            return Err(NetlinkError::Io {
                op: "send (short)",
                errno: Errno::EMSGSIZE,
            });
        }
        let mut refused: Vec<(String, Errno)> = Vec::new();
        let mut done = false;
        loop {
            // Everything is queued by now; block (bounded by SO_RCVTIMEO) only while the
            // final reply is missing.
            let flags = if done || !refused.is_empty() {
                MsgFlags::MSG_DONTWAIT
            } else {
                MsgFlags::empty()
            };
            let n = match socket::recv(fd, &mut buf, flags) {
                Ok(n) => n,
                Err(Errno::EAGAIN) if done || !refused.is_empty() => break,
                Err(Errno::EAGAIN) => return Err(NetlinkError::NoAck),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(NetlinkError::Io { op: "recv", errno }),
            };
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                // struct nlmsgerr: int error; struct nlmsghdr msg (the request's header).
                if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN {
                    let p = off + NLMSG_HDRLEN;
                    let code = i32::from_ne_bytes(buf[p..p + 4].try_into().unwrap_or_default());
                    let seq =
                        u32::from_ne_bytes(buf[p + 12..p + 16].try_into().unwrap_or_default());
                    if code != 0 {
                        let what = if seq == batch.begin_seq {
                            "commit".to_string()
                        } else {
                            batch
                                .origin(seq)
                                .and_then(|i| lines.get(i))
                                .map(|l| format!("`{}`", l.chars().take(200).collect::<String>()))
                                .unwrap_or_else(|| format!("message {seq}"))
                        };
                        refused.push((what, Errno::from_raw(-code)));
                    }
                    if seq == batch.last_seq {
                        done = true;
                    }
                }
                off += (len + 3) & !3;
            }
        }
        if !refused.is_empty() {
            return Err(NetlinkError::Refused(refused));
        }
        Ok(())
    }
}
