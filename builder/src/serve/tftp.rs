//! A read-only TFTP server (RFC 1350, with the blksize and tsize options
//! of RFC 2348/2349) for firmware that only speaks TFTP: it fetches the
//! iPXE binary (Debian's ipxe package: undionly.kpxe, ipxe.efi), which
//! then speaks HTTP to `serve`.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::net::UdpSocket;

use super::{Event, Log};

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

const DEFAULT_BLKSIZE: usize = 512;
/// RFC 2348's limits.
const BLKSIZE_RANGE: std::ops::RangeInclusive<usize> = 8..=65464;
/// Files here are boot loaders; a bigger one is a mistake.
const MAX_FILE: u64 = 64 << 20;
const RETRY_AFTER: Duration = Duration::from_secs(1);
const RETRIES: u32 = 5;

/// A parsed read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub file: String,
    pub mode: String,
    pub blksize: Option<usize>,
    pub tsize: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read(ReadRequest),
    /// Writes are refused.
    Write,
    Other,
}

pub fn parse(packet: &[u8]) -> Option<Packet> {
    if packet.len() < 2 {
        return None;
    }
    let op = u16::from_be_bytes([packet[0], packet[1]]);
    match op {
        RRQ => {}
        WRQ => return Some(Packet::Write),
        _ => return Some(Packet::Other),
    }
    let fields: Vec<&[u8]> = packet[2..].split(|b| *b == 0).collect();
    // "file\0mode\0[opt\0value\0]*" splits into an even count plus a final
    // empty piece after the last NUL.
    if fields.len() < 3 || !fields.last()?.is_empty() {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let mut req = ReadRequest {
        file: text(fields[0])?,
        mode: text(fields[1])?.to_ascii_lowercase(),
        blksize: None,
        tsize: false,
    };
    let opts = &fields[2..fields.len() - 1];
    for pair in opts.chunks(2) {
        let [name, value] = pair else { break };
        match text(name)?.to_ascii_lowercase().as_str() {
            "blksize" => {
                req.blksize = text(value)?
                    .parse::<usize>()
                    .ok()
                    .map(|n| n.clamp(*BLKSIZE_RANGE.start(), *BLKSIZE_RANGE.end()));
            }
            "tsize" => req.tsize = true,
            _ => {}
        }
    }
    Some(Packet::Read(req))
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

fn data_packet(block: u16, data: &[u8]) -> Vec<u8> {
    let mut p = DATA.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(data);
    p
}

fn oack_packet(opts: &[(&str, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// The file under `root` a request names; None for anything that would
/// leave it.
pub fn resolve(root: &Path, name: &str) -> Option<PathBuf> {
    let rel = Path::new(name.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

pub async fn serve(sock: UdpSocket, root: PathBuf, log: Log) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let local = sock.local_addr()?;
        match parse(&buf[..n]) {
            Some(Packet::Read(req)) => {
                let (root, log) = (root.clone(), log.clone());
                tokio::spawn(async move {
                    let file = req.file.clone();
                    let (bytes, error) = match transfer(local, peer, &root, req).await {
                        Ok(bytes) => (Some(bytes), None),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    log(&Event::Tftp {
                        peer,
                        file,
                        bytes,
                        error,
                    });
                });
            }
            Some(Packet::Write) => {
                let _ = sock
                    .send_to(&error_packet(2, "this server only hands out files"), peer)
                    .await;
                log(&Event::TftpWriteRefused { peer });
            }
            Some(Packet::Other) | None => {}
        }
    }
}

/// Sends one file from a socket of its own (the transfer ID).
async fn transfer(
    local: SocketAddr,
    peer: SocketAddr,
    root: &Path,
    req: ReadRequest,
) -> std::io::Result<u64> {
    let sock = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    sock.connect(peer).await?;
    let data = match load(root, &req.file).await {
        Ok(d) => d,
        Err(e) => {
            sock.send(&error_packet(1, &e.to_string())).await?;
            return Err(std::io::Error::other(e));
        }
    };
    if req.mode != "octet" && req.mode != "netascii" {
        sock.send(&error_packet(4, "only octet mode")).await?;
        return Err(std::io::Error::other(format!("mode {}", req.mode)));
    }
    let blksize = req.blksize.unwrap_or(DEFAULT_BLKSIZE);
    let mut opts = Vec::new();
    if let Some(b) = req.blksize {
        opts.push(("blksize", b.to_string()));
    }
    if req.tsize {
        opts.push(("tsize", data.len().to_string()));
    }
    if !opts.is_empty() {
        send_until_acked(&sock, &oack_packet(&opts), 0).await?;
    }
    // A final block shorter than blksize (possibly empty) ends the transfer.
    let blocks = data.len() / blksize + 1;
    for i in 0..blocks {
        let block = ((i + 1) % 65536) as u16;
        let chunk = &data[i * blksize..((i + 1) * blksize).min(data.len())];
        send_until_acked(&sock, &data_packet(block, chunk), block).await?;
    }
    Ok(data.len() as u64)
}

/// The file `name` names under `root`. The error's text goes to the
/// client, so it names the file as the client asked for it, not where it
/// lies here.
async fn load(root: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = resolve(root, name).ok_or_else(|| anyhow!("{name}: not a file name here"))?;
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|_| anyhow!("{name}: no such file"))?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        bail!("{name}: not a file this server hands out");
    }
    tokio::fs::read(&path)
        .await
        .map_err(|e| anyhow!("{name}: {e}"))
}

async fn send_until_acked(sock: &UdpSocket, packet: &[u8], block: u16) -> std::io::Result<()> {
    let mut buf = [0u8; 516];
    for _ in 0..RETRIES {
        sock.send(packet).await?;
        let deadline = tokio::time::Instant::now() + RETRY_AFTER;
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await;
            let Ok(n) = got else { break };
            let n = n?;
            if n >= 4 {
                let op = u16::from_be_bytes([buf[0], buf[1]]);
                let num = u16::from_be_bytes([buf[2], buf[3]]);
                if op == ACK && num == block {
                    return Ok(());
                }
                if op == ERROR {
                    return Err(std::io::Error::other("the client gave up"));
                }
            }
        }
    }
    Err(std::io::Error::other(format!(
        "no acknowledgement of block {block}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_requests_parse_with_their_options() {
        let p = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00tsize\x000\x00";
        assert_eq!(
            parse(p),
            Some(Packet::Read(ReadRequest {
                file: "undionly.kpxe".into(),
                mode: "octet".into(),
                blksize: Some(1468),
                tsize: true,
            }))
        );
        let p = b"\x00\x01a\x00OCTET\x00blksize\x00100000\x00";
        let Some(Packet::Read(r)) = parse(p) else {
            panic!()
        };
        assert_eq!((r.mode.as_str(), r.blksize), ("octet", Some(65464)));
        assert_eq!(parse(b"\x00\x02f\x00octet\x00"), Some(Packet::Write));
        assert_eq!(parse(b"\x00\x01f\x00octet"), None);
        assert_eq!(parse(b"\x00"), None);
    }

    #[test]
    fn names_cannot_leave_the_root() {
        let root = Path::new("/usr/lib/ipxe");
        assert_eq!(
            resolve(root, "/undionly.kpxe"),
            Some(root.join("undionly.kpxe"))
        );
        assert_eq!(resolve(root, "../../etc/shadow"), None);
        assert_eq!(resolve(root, "qemu/../../x"), None);
        assert_eq!(resolve(root, ""), None);
    }
}
