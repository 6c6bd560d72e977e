//! Just enough HPACK (RFC 7541) to read the header blocks an HTTP/2 client sends
//! and write them out again: a decoder that keeps the client's dynamic table, and an
//! encoder that never indexes, so the block it writes means the same whatever table
//! the reader has.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// One header field as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// Sent "never indexed": an intermediary must pass it on so.
    pub sensitive: bool,
}

impl Header {
    #[cfg(test)]
    pub fn new(name: &[u8], value: &[u8]) -> Header {
        Header {
            name: name.to_vec(),
            value: value.to_vec(),
            sensitive: false,
        }
    }
}

/// A header block that is not valid HPACK, with what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid header block: {}", self.0)
    }
}

/// Appendix A: the static table, indices 1 to 61.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// What a table entry costs (section 4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// The receiving side of one connection's header compression.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is the front.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// The most the encoder may set the table to: the receiver's
    /// SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// The header list a block carries; the table changes as the block says.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Header>, HpackError> {
        let mut input = Input { bytes: block };
        let mut headers = Vec::new();
        while let Some(&first) = input.bytes.first() {
            if first & 0x80 != 0 {
                let index = input.integer(7)?;
                let (name, value) = self.lookup(index)?;
                headers.push(Header {
                    name,
                    value,
                    sensitive: false,
                });
            } else if first & 0xc0 == 0x40 {
                let header = self.literal(&mut input, 6)?;
                self.insert(header.name.clone(), header.value.clone());
                headers.push(header);
            } else if first & 0xe0 == 0x20 {
                // Section 4.2: only at the start of a block.
                if !headers.is_empty() {
                    return Err(HpackError("table size update after a header field"));
                }
                let size = input.integer(5)?;
                if size > self.limit {
                    return Err(HpackError("table size update above the limit"));
                }
                self.max_size = size;
                self.evict(0);
            } else {
                let sensitive = first & 0x10 != 0;
                let mut header = self.literal(&mut input, 4)?;
                header.sensitive = sensitive;
                headers.push(header);
            }
        }
        Ok(headers)
    }

    fn lookup(&self, index: usize) -> Result<(Vec<u8>, Vec<u8>), HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or(HpackError("index beyond the dynamic table")),
        }
    }

    fn literal(&self, input: &mut Input<'_>, prefix: u32) -> Result<Header, HpackError> {
        let index = input.integer(prefix)?;
        let name = if index == 0 {
            input.string()?
        } else {
            self.lookup(index)?.0
        };
        let value = input.string()?;
        Ok(Header {
            name,
            value,
            sensitive: false,
        })
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // Section 4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Drops the oldest entries until `room` more fits.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= entry_size(&name, &value);
        }
    }
}

struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or(HpackError("block ends inside a field"))?;
        self.bytes = rest;
        Ok(b)
    }

    /// Section 5.1: an integer in the low `prefix` bits of the first byte, more in
    /// the bytes after it when those bits are all set.
    fn integer(&mut self, prefix: u32) -> Result<usize, HpackError> {
        let mask = (1usize << prefix) - 1;
        let mut value = usize::from(self.byte()?) & mask;
        if value < mask {
            return Ok(value);
        }
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift > 28 {
                return Err(HpackError("integer too large"));
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
    }

    /// Section 5.2: a length-prefixed string, Huffman-coded if the top bit says so.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.bytes.first().is_some_and(|b| b & 0x80 != 0);
        let len = self.integer(7)?;
        if len > self.bytes.len() {
            return Err(HpackError("string longer than the block"));
        }
        let (raw, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        if huffman {
            huffman_decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// Appendix B's code as the length of each symbol's code (symbols 0 to 255, and 256
/// for EOS). The code is canonical: codes of one length follow each other in symbol
/// order, each length's first code following the previous length's last.
const CODE_LENGTHS: &[(u8, &[u16])] = &[
    (5, &[48, 49, 50, 97, 99, 101, 105, 111, 115, 116]),
    (
        6,
        &[
            32, 37, 45, 46, 47, 51, 52, 53, 54, 55, 56, 57, 61, 65, 95, 98, 100, 102, 103, 104,
            108, 109, 110, 112, 114, 117,
        ],
    ),
    (
        7,
        &[
            58, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86,
            87, 89, 106, 107, 113, 118, 119, 120, 121, 122,
        ],
    ),
    (8, &[38, 42, 44, 59, 88, 90]),
    (10, &[33, 34, 40, 41, 63]),
    (11, &[39, 43, 124]),
    (12, &[35, 62]),
    (13, &[0, 36, 64, 91, 93, 126]),
    (14, &[94, 125]),
    (15, &[60, 96, 123]),
    (19, &[92, 195, 208]),
    (20, &[128, 130, 131, 162, 184, 194, 224, 226]),
    (
        21,
        &[
            153, 161, 167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230,
        ],
    ),
    (
        22,
        &[
            129, 132, 133, 134, 136, 146, 154, 156, 160, 163, 164, 169, 170, 173, 178, 181, 185,
            186, 187, 189, 190, 196, 198, 228, 232, 233,
        ],
    ),
    (
        23,
        &[
            1, 135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165, 166,
            168, 174, 175, 180, 182, 183, 188, 191, 197, 231, 239,
        ],
    ),
    (
        24,
        &[9, 142, 144, 145, 148, 159, 171, 206, 215, 225, 236, 237],
    ),
    (25, &[199, 207, 234, 235]),
    (
        26,
        &[
            192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242, 243, 255,
        ],
    ),
    (
        27,
        &[
            203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252,
            253, 254,
        ],
    ),
    (
        28,
        &[
            2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28,
            29, 30, 31, 127, 220, 249,
        ],
    ),
    (30, &[10, 13, 22, 256]),
];

const EOS: u16 = 256;

/// For each code length: the first code of that length and where its symbols start
/// in the list of all symbols in code order.
struct Canonical {
    first_code: [u32; 31],
    count: [u32; 31],
    start: [usize; 31],
    symbols: Vec<u16>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut c = Canonical {
            first_code: [0; 31],
            count: [0; 31],
            start: [0; 31],
            symbols: Vec::with_capacity(257),
        };
        let mut code = 0u32;
        let mut previous = 0u8;
        for &(len, symbols) in CODE_LENGTHS {
            code <<= len - previous;
            previous = len;
            let l = usize::from(len);
            c.first_code[l] = code;
            c.count[l] = symbols.len() as u32;
            c.start[l] = c.symbols.len();
            c.symbols.extend_from_slice(symbols);
            code += symbols.len() as u32;
        }
        c
    })
}

/// Section 5.2: the code's bits, most significant first; what remains of the last
/// byte is padding, at most 7 bits, all ones (a prefix of EOS).
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let table = canonical();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for byte in raw {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            if len > 30 {
                return Err(HpackError("Huffman code longer than any symbol's"));
            }
            let offset = code.wrapping_sub(table.first_code[len]);
            if code >= table.first_code[len] && offset < table.count[len] {
                let symbol = table.symbols[table.start[len] + offset as usize];
                if symbol == EOS {
                    return Err(HpackError("EOS inside a Huffman string"));
                }
                out.push(symbol as u8);
                (code, len) = (0, 0);
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(HpackError("Huffman padding is not a prefix of EOS"));
    }
    Ok(out)
}

/// Writes `headers` as literals that enter no table (never indexed where the client
/// said so), names and values as plain strings: the reader's table stays as it is.
pub fn encode(headers: &[Header], out: &mut Vec<u8>) {
    for header in headers {
        out.push(if header.sensitive { 0x10 } else { 0x00 });
        encode_string(&header.name, out);
        encode_string(&header.value, out);
    }
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    let len = s.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        let mut rest = len - 0x7f;
        while rest >= 0x80 {
            out.push((rest as u8 & 0x7f) | 0x80);
            rest >>= 7;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(headers: &[Header]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                (
                    String::from_utf8(h.name.clone()).unwrap(),
                    String::from_utf8(h.value.clone()).unwrap(),
                )
            })
            .collect()
    }

    fn expect(pairs_: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs_
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The code the lengths describe is complete: no bit string is left without a
    /// symbol, none is claimed twice (Kraft's sum is exactly 1), and every symbol
    /// has one code.
    #[test]
    fn the_huffman_code_is_complete() {
        let mut seen = [false; 257];
        let mut kraft = 0u64;
        for &(len, symbols) in CODE_LENGTHS {
            for &s in symbols {
                assert!(!seen[usize::from(s)], "symbol {s} twice");
                seen[usize::from(s)] = true;
                kraft += 1 << (30 - len);
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(kraft, 1 << 30);
        let c = canonical();
        assert_eq!(c.first_code[5], 0, "'0' is 00000");
        assert_eq!(c.first_code[30] + 3, (1 << 30) - 1, "EOS is thirty ones");
    }

    /// RFC 7541, C.4: three requests on one connection, Huffman-coded, the second
    /// and third indexing what the first put in the table.
    #[test]
    fn rfc_7541_requests_with_huffman_coding() {
        let mut d = Decoder::new(4096);
        let first = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            pairs(&first),
            expect(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.size, 57);
        let second = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            pairs(&second),
            expect(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(
            pairs(&third),
            expect(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
        assert_eq!(d.table.len(), 3);
    }

    #[test]
    fn eviction_and_size_updates_follow_the_table_limit() {
        let mut d = Decoder::new(100);
        // Literal with indexing, new name: 32 + 1 + 30 bytes each.
        let entry = |c: u8| {
            let mut b = vec![0x40, 1, c, 30];
            b.extend(std::iter::repeat_n(b'v', 30));
            b
        };
        d.decode(&entry(b'a')).unwrap();
        assert_eq!(d.table.len(), 1);
        d.decode(&entry(b'b')).unwrap();
        assert_eq!(d.table.len(), 1, "a is evicted for b");
        assert_eq!(pairs(&d.decode(&[0xbe]).unwrap())[0].0, "b");
        assert_eq!(
            d.decode(&[0xbf]),
            Err(HpackError("index beyond the dynamic table"))
        );
        // Size update to 0 empties the table; above the limit is refused.
        d.decode(&[0x20]).unwrap();
        assert!(d.table.is_empty());
        assert!(d.decode(&[0x3f, 0x46]).is_err(), "101 > 100");
        assert!(d.decode(&[0x82, 0x20]).is_err(), "an update after a field");
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(4096);
        for block in [
            &[0x80][..],
            &[0x41],
            &[0x41, 0x05, b'a'],
            &[0x00, 0x81, 0xff],
            &[0x00, 0x7f],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00],
        ] {
            assert!(d.decode(block).is_err(), "{block:?}");
        }
    }

    #[test]
    fn encoded_headers_decode_to_themselves_and_leave_the_table_alone() {
        let headers = vec![
            Header::new(b":authority", b"localhost"),
            Header::new(b":path", &[b'/'; 300]),
            Header {
                name: b"authorization".to_vec(),
                value: b"secret".to_vec(),
                sensitive: true,
            },
        ];
        let mut block = Vec::new();
        encode(&headers, &mut block);
        let mut d = Decoder::new(4096);
        assert_eq!(d.decode(&block).unwrap(), headers);
        assert!(d.table.is_empty());
    }
}
