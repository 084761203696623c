//! Tar headers read the way Go's `archive/tar` reads them, because that reader is what
//! containerd applies layers with: same format detection, numeric parsing, PAX records,
//! GNU long names, ustar prefixes, GNU atimes and GNU sparse maps (old 'S' and PAX 0.x/1.0).
//!
//! Pure parsing over an [`Input`]; nothing here touches the file system.

use std::io;

use super::input::Input;

pub(crate) const BLOCK: usize = 512;
/// Go's `maxSpecialFileSize`: PAX headers and GNU long names are capped at 1 MiB.
const MAX_SPECIAL: i64 = 1 << 20;

/// PAX records (or xattrs): key, value.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

pub(crate) const TYPE_REG: u8 = b'0';
pub(crate) const TYPE_LINK: u8 = b'1';
pub(crate) const TYPE_SYMLINK: u8 = b'2';
pub(crate) const TYPE_CHAR: u8 = b'3';
pub(crate) const TYPE_BLOCK: u8 = b'4';
pub(crate) const TYPE_DIR: u8 = b'5';
pub(crate) const TYPE_FIFO: u8 = b'6';
pub(crate) const TYPE_GLOBAL: u8 = b'g';
pub(crate) const TYPE_GNU_SPARSE: u8 = b'S';

/// One archive member, after PAX and GNU meta headers have been merged into it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Header {
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub typeflag: u8,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    /// Logical size (the expanded size of a sparse file).
    pub size: i64,
    /// Nanoseconds since the epoch.
    pub mtime: i128,
    pub atime: Option<i128>,
    pub devmajor: i64,
    pub devminor: i64,
    /// `SCHILY.xattr.*` records, key without the prefix, in archive order, duplicates removed.
    pub xattrs: Records,
    /// Data fragments `(offset, length)` of a sparse file, in order.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// Why the archive could not be read.
#[derive(Debug)]
pub(crate) enum TarError {
    Io(io::Error),
    /// Malformed archive; the name of the header being read when known.
    Format(&'static str, Option<Vec<u8>>),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

fn bad(reason: &'static str) -> TarError {
    TarError::Format(reason, None)
}

/// Streaming reader of archive members.
pub(crate) struct TarReader {
    pub input: Input,
    /// Unread data bytes of the current member.
    remaining: u64,
    /// Padding after the current member's data.
    pad: u64,
}

impl TarReader {
    pub fn new(input: Input) -> Self {
        Self {
            input,
            remaining: 0,
            pad: 0,
        }
    }

    /// Bytes of data of the current member not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Up to `max` bytes of the current member's data (at least one unless it is exhausted).
    pub fn data(&mut self, max: usize) -> io::Result<&[u8]> {
        let want = (max as u64).min(self.remaining) as usize;
        if want == 0 {
            return Ok(&[]);
        }
        let s = self.input.take(want)?;
        self.remaining -= s.len() as u64;
        Ok(s)
    }

    fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        if buf.len() as u64 > self.remaining {
            return Err(bad("unexpected end of member data"));
        }
        self.input.read_exact(buf)?;
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    fn start_data(&mut self, size: u64) {
        self.remaining = size;
        self.pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    }

    fn read_special(&mut self, size: i64) -> Result<Vec<u8>, TarError> {
        if !(0..=MAX_SPECIAL).contains(&size) {
            return Err(bad("PAX or GNU long-name header too large"));
        }
        self.start_data(size as u64);
        let mut v = vec![0u8; size as usize];
        self.read_data_exact(&mut v)?;
        self.input.skip(self.pad)?;
        self.pad = 0;
        Ok(v)
    }

    /// The next member, or `None` at the end of the archive (two zero blocks, one zero
    /// block then EOF, or EOF at a header boundary, as Go accepts).
    pub fn next(&mut self) -> Result<Option<Header>, TarError> {
        self.input.skip(self.remaining + self.pad)?;
        self.remaining = 0;
        self.pad = 0;

        let mut pax: Option<Records> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut blk = [0u8; BLOCK];
        loop {
            if !self.input.read_block_or_eof(&mut blk)? {
                return Ok(None);
            }
            if blk.iter().all(|&b| b == 0) {
                if !self.input.read_block_or_eof(&mut blk)? || blk.iter().all(|&b| b == 0) {
                    return Ok(None);
                }
                return Err(bad("zero block followed by a non-zero block"));
            }
            let (mut hdr, format, phys) = parse_block(&blk)?;
            match hdr.typeflag {
                b'x' | TYPE_GLOBAL => {
                    let data = self.read_special(phys)?;
                    let recs = parse_pax(&data)
                        .map_err(|r| TarError::Format(r, Some(hdr.name.clone())))?;
                    if hdr.typeflag == TYPE_GLOBAL {
                        // Go hands global headers to the caller (containerd ignores them).
                        hdr.xattrs = xattrs_of(&recs);
                        return Ok(Some(hdr));
                    }
                    pax = Some(recs);
                }
                b'L' | b'K' => {
                    let data = self.read_special(phys)?;
                    let s = cstr(&data).to_vec();
                    if hdr.typeflag == b'L' {
                        long_name = Some(s);
                    } else {
                        long_link = Some(s);
                    }
                }
                _ => {
                    let mut phys = phys;
                    let recs = pax.take().unwrap_or_default();
                    merge_pax(&mut hdr, &recs, &mut phys)
                        .map_err(|r| TarError::Format(r, Some(hdr.name.clone())))?;
                    if let Some(n) = long_name {
                        hdr.name = n;
                    }
                    if let Some(l) = long_link {
                        hdr.linkname = l;
                    }
                    if hdr.typeflag == 0 {
                        hdr.typeflag = if hdr.name.ends_with(b"/") {
                            TYPE_DIR
                        } else {
                            TYPE_REG
                        };
                    }
                    if header_only(hdr.typeflag) {
                        phys = 0;
                    }
                    if phys < 0 {
                        return Err(TarError::Format("negative size", Some(hdr.name)));
                    }
                    self.start_data(phys as u64);
                    let name = hdr.name.clone();
                    self.sparse(&mut hdr, &blk, format, &recs)
                        .map_err(|e| match e {
                            TarError::Format(r, None) => TarError::Format(r, Some(name)),
                            e => e,
                        })?;
                    return Ok(Some(hdr));
                }
            }
        }
    }

    /// Go's `handleSparseFile`: old GNU sparse maps and PAX GNU.sparse 0.0/0.1/1.0.
    fn sparse(
        &mut self,
        hdr: &mut Header,
        blk: &[u8; BLOCK],
        format: Format,
        recs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), TarError> {
        let frags = if hdr.typeflag == TYPE_GNU_SPARSE {
            if format != Format::Gnu {
                return Err(bad("old GNU sparse header in a non-GNU block"));
            }
            hdr.size = numeric(&blk[483..495])?;
            let mut frags = Vec::new();
            let mut area: Vec<u8> = blk[386..483].to_vec(); // 4 entries + isextended
            let mut entries = 4;
            loop {
                for i in 0..entries {
                    let e = &area[i * 24..i * 24 + 24];
                    if e[0] == 0 {
                        break;
                    }
                    frags.push((numeric(&e[..12])?, numeric(&e[12..])?));
                }
                if area[entries * 24] == 0 {
                    break;
                }
                let mut ext = [0u8; BLOCK];
                self.input.read_exact(&mut ext)?;
                area = ext[..505].to_vec(); // 21 entries + isextended at 504
                entries = 21;
            }
            frags
        } else {
            let get = |k: &str| {
                recs.iter()
                    .rev()
                    .find(|(key, _)| key == k.as_bytes())
                    .map(|(_, v)| v.as_slice())
                    .filter(|v| !v.is_empty())
            };
            let (major, minor) = (get("GNU.sparse.major"), get("GNU.sparse.minor"));
            let is1x0 = match (major, minor) {
                (Some(b"0"), Some(b"0" | b"1")) => false,
                (Some(b"1"), Some(b"0")) => true,
                (None, None) if get("GNU.sparse.map").is_some() => false,
                _ => return Ok(()),
            };
            if let Some(n) = get("GNU.sparse.name") {
                hdr.name = n.to_vec();
            }
            if let Some(s) = get("GNU.sparse.size").or_else(|| get("GNU.sparse.realsize")) {
                hdr.size = dec(s).ok_or(bad("bad GNU.sparse size"))?;
            }
            if is1x0 {
                self.sparse_map_1x0()?
            } else {
                let map = get("GNU.sparse.map").unwrap_or(b"");
                let nums: Vec<i64> = if map.is_empty() {
                    Vec::new()
                } else {
                    map.split(|&b| b == b',')
                        .map(|s| dec(s).ok_or(bad("bad GNU.sparse.map")))
                        .collect::<Result<_, _>>()?
                };
                if nums.len() % 2 != 0 {
                    return Err(bad("odd GNU.sparse.map"));
                }
                nums.chunks(2).map(|c| (c[0], c[1])).collect()
            }
        };
        if header_only(hdr.typeflag) {
            return Err(bad("sparse map on a header-only entry"));
        }
        // validateSparseEntries
        let mut out = Vec::with_capacity(frags.len());
        let mut end = 0i64;
        let mut total = 0u64;
        for (off, len) in frags {
            if off < 0
                || len < 0
                || off.checked_add(len).is_none()
                || off < end
                || off + len > hdr.size
            {
                return Err(bad("invalid sparse map"));
            }
            end = off + len;
            total += len as u64;
            out.push((off as u64, len as u64));
        }
        if hdr.size < 0 {
            return Err(bad("negative size"));
        }
        if total != self.remaining {
            return Err(bad("sparse map does not match the data in the archive"));
        }
        hdr.sparse = Some(out);
        Ok(())
    }

    /// Go's `readGNUSparseMap1x0`: decimal numbers, one a line, at the start of the data,
    /// padded to a block.
    fn sparse_map_1x0(&mut self) -> Result<Vec<(i64, i64)>, TarError> {
        let mut text: Vec<u8> = Vec::new();
        let mut pos = 0;
        let mut next_num = |this: &mut Self, text: &mut Vec<u8>| -> Result<i64, TarError> {
            loop {
                if let Some(nl) = text[pos..].iter().position(|&b| b == b'\n') {
                    let n = dec(&text[pos..pos + nl]).ok_or(bad("bad GNU sparse 1.0 map"))?;
                    pos += nl + 1;
                    return Ok(n);
                }
                if text.len() >= MAX_SPECIAL as usize {
                    return Err(bad("GNU sparse 1.0 map too large"));
                }
                let mut b = [0u8; BLOCK];
                this.read_data_exact(&mut b)?;
                text.extend_from_slice(&b);
            }
        };
        let n = next_num(self, &mut text)?;
        if !(0..=(MAX_SPECIAL / 2)).contains(&n) {
            return Err(bad("bad GNU sparse 1.0 map size"));
        }
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let off = next_num(self, &mut text)?;
            let len = next_num(self, &mut text)?;
            v.push((off, len));
        }
        Ok(v)
    }
}

fn header_only(t: u8) -> bool {
    matches!(
        t,
        TYPE_LINK | TYPE_SYMLINK | TYPE_CHAR | TYPE_BLOCK | TYPE_DIR | TYPE_FIFO
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

/// Bytes up to the first NUL (Go's `parseString`).
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn dec(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Go's `parseNumeric`: base-256 when the high bit is set, else octal padded with NULs/spaces.
fn numeric(b: &[u8]) -> Result<i64, TarError> {
    if !b.is_empty() && b[0] & 0x80 != 0 {
        let inv = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return Err(bad("numeric field overflow"));
            }
            x = x << 8 | c as u64;
        }
        if x >> 63 > 0 {
            return Err(bad("numeric field overflow"));
        }
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    let t = trim(b);
    if t.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(cstr(t)).map_err(|_| bad("bad octal field"))?;
    u64::from_str_radix(s, 8)
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .ok_or(bad("bad octal field"))
}

fn trim(b: &[u8]) -> &[u8] {
    let pad = |c: &u8| *c == b' ' || *c == 0;
    let start = b.iter().position(|c| !pad(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !pad(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

/// Go's `readHeader` for one raw block: the header and the physical data size.
fn parse_block(blk: &[u8; BLOCK]) -> Result<(Header, Format, i64), TarError> {
    let name = cstr(&blk[0..100]).to_vec();
    let chk = numeric(&blk[148..156])
        .map_err(|_| TarError::Format("bad header checksum", Some(name.clone())))?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in blk.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += c as i64;
        signed += c as i8 as i64;
    }
    if chk != unsigned && chk != signed {
        return Err(TarError::Format("bad header checksum", Some(name)));
    }
    let format = match (&blk[257..263], &blk[263..265], &blk[508..512]) {
        (b"ustar\0", _, b"tar\0") => Format::Star,
        (b"ustar\0", _, _) => Format::Ustar,
        (b"ustar ", b" \0", _) => Format::Gnu,
        _ => Format::V7,
    };
    let res = (|| -> Result<(Header, i64), TarError> {
        let mut h = Header {
            typeflag: blk[156],
            linkname: cstr(&blk[157..257]).to_vec(),
            mode: numeric(&blk[100..108])?,
            uid: numeric(&blk[108..116])?,
            gid: numeric(&blk[116..124])?,
            mtime: numeric(&blk[136..148])? as i128 * 1_000_000_000,
            name: name.clone(),
            ..Header::default()
        };
        let size = numeric(&blk[124..136])?;
        if format != Format::V7 {
            h.devmajor = numeric(&blk[329..337])?;
            h.devminor = numeric(&blk[337..345])?;
            let prefix: &[u8] = match format {
                Format::Ustar => cstr(&blk[345..500]),
                Format::Star => {
                    h.atime = Some(numeric(&blk[476..488])? as i128 * 1_000_000_000);
                    cstr(&blk[345..476])
                }
                _ => {
                    if blk[345] != 0 {
                        h.atime = numeric(&blk[345..357])
                            .ok()
                            .map(|s| s as i128 * 1_000_000_000);
                    }
                    b""
                }
            };
            if !prefix.is_empty() {
                let mut n = prefix.to_vec();
                n.push(b'/');
                n.extend_from_slice(&h.name);
                h.name = n;
            }
        }
        Ok((h, size))
    })();
    match res {
        Ok((h, size)) => Ok((h, format, size)),
        Err(TarError::Format(r, None)) => Err(TarError::Format(r, Some(name))),
        Err(e) => Err(e),
    }
}

/// Go's `parsePAX`: records `"%d %s=%s\n"`; GNU sparse 0.0 offset/numbytes pairs joined
/// into `GNU.sparse.map`. Returned in order; later duplicates win.
fn parse_pax(mut s: &[u8]) -> Result<Records, &'static str> {
    const BAD: &str = "malformed PAX record";
    let mut out: Records = Vec::new();
    let mut sparse: Vec<&[u8]> = Vec::new();
    while !s.is_empty() {
        let sp = s.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let n = dec(&s[..sp]).ok_or(BAD)?;
        if n < 5 || n as usize > s.len() || n as usize <= sp + 1 {
            return Err(BAD);
        }
        let n = n as usize;
        let rec = &s[sp + 1..n - 1];
        if s[n - 1] != b'\n' {
            return Err(BAD);
        }
        s = &s[n..];
        let eq = rec.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        if k.is_empty() {
            return Err(BAD);
        }
        let nul_checked: &[u8] = match k {
            b"path" | b"linkpath" | b"uname" | b"gname" => v,
            _ => k,
        };
        if nul_checked.contains(&0) {
            return Err(BAD);
        }
        match k {
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                let want: &[u8] = if sparse.len() % 2 == 0 {
                    b"GNU.sparse.offset"
                } else {
                    b"GNU.sparse.numbytes"
                };
                if k != want || v.contains(&b',') {
                    return Err(BAD);
                }
                sparse.push(v);
            }
            _ => {
                out.retain(|(key, _)| key != k);
                out.push((k.to_vec(), v.to_vec()));
            }
        }
    }
    if !sparse.is_empty() {
        out.retain(|(key, _)| key != b"GNU.sparse.map");
        out.push((b"GNU.sparse.map".to_vec(), sparse.join(&b","[..])));
    }
    Ok(out)
}

fn xattrs_of(recs: &[(Vec<u8>, Vec<u8>)]) -> Records {
    recs.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(b"SCHILY.xattr.")
                .map(|name| (name.to_vec(), v.clone()))
        })
        .collect()
}

/// Go's `parsePAXTime`, in nanoseconds.
fn pax_time(s: &[u8]) -> Option<i128> {
    let (ss, sn) = match s.iter().position(|&b| b == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &b""[..]),
    };
    let secs = dec(ss)? as i128;
    if sn.is_empty() {
        return Some(secs * 1_000_000_000);
    }
    if !sn.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut ns: i128 = 0;
    for i in 0..9 {
        ns = ns * 10 + sn.get(i).map_or(0, |d| (d - b'0') as i128);
    }
    if ss.first() == Some(&b'-') {
        ns = -ns;
    }
    Some(secs * 1_000_000_000 + ns)
}

/// Go's `mergePAX` (empty values keep the header's value), plus containerd's use of every
/// `SCHILY.xattr.*` record (including empty ones) as an xattr.
fn merge_pax(
    h: &mut Header,
    recs: &[(Vec<u8>, Vec<u8>)],
    size: &mut i64,
) -> Result<(), &'static str> {
    for (k, v) in recs {
        if v.is_empty() {
            continue;
        }
        match k.as_slice() {
            b"path" => h.name = v.clone(),
            b"linkpath" => h.linkname = v.clone(),
            b"uid" => h.uid = dec(v).ok_or("bad PAX uid")?,
            b"gid" => h.gid = dec(v).ok_or("bad PAX gid")?,
            b"atime" => h.atime = Some(pax_time(v).ok_or("bad PAX atime")?),
            b"mtime" => h.mtime = pax_time(v).ok_or("bad PAX mtime")?,
            b"ctime" => {
                pax_time(v).ok_or("bad PAX ctime")?;
            }
            b"size" => *size = dec(v).ok_or("bad PAX size")?,
            _ => {}
        }
    }
    h.size = *size;
    h.xattrs = xattrs_of(recs);
    Ok(())
}

#[cfg(test)]
#[path = "header_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(numeric(b"  755 \0").unwrap(), 0o755);
        assert_eq!(numeric(b"\0\0\0").unwrap(), 0);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert_eq!(numeric(&[0xff; 8]).unwrap(), -1);
        assert!(numeric(b"9\0").is_err());
    }

    #[test]
    fn pax_records_and_times() {
        let r = parse_pax(b"18 path=some/name\n10 uid=42\n").unwrap();
        assert_eq!(r[0], (b"path".to_vec(), b"some/name".to_vec()));
        assert!(parse_pax(b"11 path=x\n").is_err());
        assert!(parse_pax(b"10 path=x!").is_err());
        assert!(parse_pax(b"3 a\n").is_err());
        assert_eq!(pax_time(b"1.5"), Some(1_500_000_000));
        assert_eq!(pax_time(b"-1.5"), Some(-1_500_000_000));
        assert_eq!(pax_time(b"2.1234567891"), Some(2_123_456_789));
        assert_eq!(pax_time(b"x"), None);
    }
}
