//! The JSON reader behind [`crate::admission::parse`]: a serde deserializer over borrowed bytes, made for
//! reading a few fields out of a large document.
//!
//! An AdmissionReview for a pod is mostly what the engine never reads: managedFields, env, probes, volumes.
//! A general JSON parser checks every token of those; this reader checks what it reads token by token and
//! skips the rest by structure: the whole body must be UTF-8, every skipped string must end and hold only
//! known escapes, and brackets must nest and match, but the scalars, commas and colons between them are not
//! checked. That is safe here because a skipped value cannot change the patch: the patch only ever names
//! fields this reader did read, and the API server, which encoded the review, applies it to its own copy.
//!
//! Strings without escapes are borrowed from the input; keys and values with escapes are decoded into owned
//! strings. Errors carry the line and column where reading stopped.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};
use wide::u8x16;

/// Deeper than any Kubernetes object gets; a bound on recursion for hostile input.
const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: Box<str>,
    /// 1-based line and column, once known.
    position: Option<(usize, usize)>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{} at line {line} column {column}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error {
            message: message.to_string().into_boxed_str(),
            position: None,
        }
    }
}

/// Reads a `T` from a whole JSON document.
pub fn from_slice<'de, T: de::Deserialize<'de>>(input: &'de [u8]) -> Result<T, Error> {
    let text = match simdutf8::compat::from_utf8(input) {
        Ok(text) => text,
        Err(e) => {
            let mut reader = Reader::new("");
            reader.input = input;
            reader.pos = e.valid_up_to();
            return Err(reader.error("invalid UTF-8"));
        }
    };
    let mut reader = Reader::new(text);
    let value = T::deserialize(&mut reader).map_err(|e| reader.locate(e))?;
    reader.skip_whitespace();
    if reader.pos < reader.input.len() {
        return Err(reader.error("trailing characters after the JSON value"));
    }
    Ok(value)
}

struct Reader<'de> {
    /// The same bytes as `text`; both are kept so borrowed strings need no second UTF-8 check.
    input: &'de [u8],
    text: &'de str,
    pos: usize,
    depth: usize,
}

impl<'de> Reader<'de> {
    fn new(text: &'de str) -> Self {
        Reader {
            input: text.as_bytes(),
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn error(&self, message: &str) -> Error {
        self.locate(Error {
            message: message.into(),
            position: None,
        })
    }

    #[cold]
    #[inline(never)]
    fn error_at(&mut self, pos: usize, message: &str) -> Error {
        self.pos = pos;
        self.error(message)
    }

    /// Attaches the current position to an error that has none (one raised by a visitor, say).
    fn locate(&self, mut error: Error) -> Error {
        if error.position.is_none() {
            let before = &self.input[..self.pos.min(self.input.len())];
            let line = 1 + memchr::memchr_iter(b'\n', before).count();
            let line_start = memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
            error.position = Some((line, 1 + self.pos.min(self.input.len()) - line_start));
        }
        error
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.input.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Result<u8, Error> {
        self.skip_whitespace();
        match self.input.get(self.pos) {
            Some(&b) => Ok(b),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), Error> {
        if self.peek()? == byte {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), Error> {
        if self.input[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    /// Before an array element or object member: `false` at the closing bracket `close`, otherwise past the
    /// comma that separates this item from the one before (`first` says there is none).
    fn next_item(&mut self, first: &mut bool, close: u8, what: &str) -> Result<bool, Error> {
        match self.peek()? {
            b if b == close => return Ok(false),
            b',' if !*first => self.pos += 1,
            _ if *first => {}
            _ => return Err(self.error(what)),
        }
        *first = false;
        Ok(true)
    }

    fn descend(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        Ok(())
    }

    /// Reads a string starting at the opening quote: borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'de, str>, Error> {
        self.pos += 1;
        let start = self.pos;
        let (end, escaped) = self.string_end()?;
        if !escaped {
            self.pos = end + 1;
            // Quotes are ASCII, so both ends are character boundaries of the validated text.
            return Ok(Cow::Borrowed(self.text.get(start..end).unwrap_or("")));
        }
        self.unescape(end).map(Cow::Owned)
    }

    /// Finds the closing quote of the string whose content starts at `self.pos`, checking its escapes and
    /// that it holds no control characters; also says whether it has escapes.
    #[inline(always)]
    fn string_end(&mut self) -> Result<(usize, bool), Error> {
        let input = self.input;
        let mut at = self.pos;
        let mut escaped = false;
        loop {
            let Some(stop) = string_stop(input, at) else {
                return Err(self.error_at(input.len(), "unterminated string"));
            };
            match input[stop] {
                b'"' => return Ok((stop, escaped)),
                b'\\' => match input.get(stop + 1) {
                    Some(&b) if ESCAPE_LETTER[usize::from(b)] => {
                        at = stop + 2;
                        escaped = true;
                    }
                    _ => return Err(self.error_at(stop + 1, "invalid escape in a string")),
                },
                _ => return Err(self.error_at(stop, "control character in a string")),
            }
        }
    }

    /// Decodes the escaped string from `self.pos` up to the closing quote at `end`.
    fn unescape(&mut self, end: usize) -> Result<String, Error> {
        let mut out = String::with_capacity(end - self.pos);
        while self.pos < end {
            let next =
                memchr::memchr(b'\\', &self.input[self.pos..end]).map_or(end, |i| self.pos + i);
            out.push_str(self.text.get(self.pos..next).unwrap_or(""));
            self.pos = next;
            if next == end {
                break;
            }
            let escape = self.input[next + 1];
            self.pos = next + 2;
            out.push(match escape {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                _ => self.unicode_escape()?,
            });
        }
        self.pos = end + 1;
        Ok(out)
    }

    /// The character of a `\uXXXX` escape (and its low surrogate), with `self.pos` after the `u`.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let high = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&high) {
            if !self.input[self.pos..].starts_with(b"\\u") {
                return Err(self.error("unpaired surrogate in a \\u escape"));
            }
            self.pos += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return Err(self.error("unpaired surrogate in a \\u escape"));
            }
            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        } else {
            high
        };
        char::from_u32(code).ok_or_else(|| self.error("unpaired surrogate in a \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .input
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| {
                u32::from_str_radix(d, 16)
                    .ok()
                    .filter(|_| !d.starts_with('+'))
            });
        match digits {
            Some(code) => {
                self.pos += 4;
                Ok(code)
            }
            None => Err(self.error("invalid \\u escape")),
        }
    }

    /// The extent of a number starting at `self.pos`, checked against JSON's grammar.
    fn number_end(&self) -> Result<(usize, bool), Error> {
        let b = self.input;
        let mut at = self.pos;
        let digits = |mut at: usize| {
            let start = at;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            (at, at > start)
        };
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        let (after_int, any) = digits(at);
        if !any || (b[at] == b'0' && after_int > at + 1) {
            return Err(self.error("invalid number"));
        }
        at = after_int;
        let mut integer = true;
        if b.get(at) == Some(&b'.') {
            let (after, any) = digits(at + 1);
            if !any {
                return Err(self.error("invalid number"));
            }
            at = after;
            integer = false;
        }
        if let Some(b'e' | b'E') = b.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = b.get(at) {
                at += 1;
            }
            let (after, any) = digits(at);
            if !any {
                return Err(self.error("invalid number"));
            }
            at = after;
            integer = false;
        }
        Ok((at, integer))
    }

    fn number<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        let (end, integer) = self.number_end()?;
        let text = self.text.get(self.pos..end).unwrap_or("");
        self.pos = end;
        if integer {
            if let Ok(n) = text.parse::<u64>() {
                return visitor.visit_u64(n);
            }
            if let Ok(n) = text.parse::<i64>() {
                return visitor.visit_i64(n);
            }
        }
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => visitor.visit_f64(n),
            _ => Err(self.error("number out of range")),
        }
    }

    /// Skips one value of any kind; see the module comment for what is checked.
    fn skip_value(&mut self) -> Result<(), Error> {
        match self.peek()? {
            b'"' => {
                self.pos += 1;
                self.pos = self.string_end()?.0 + 1;
                Ok(())
            }
            b'{' | b'[' => self.skip_container(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                self.pos = self.number_end()?.0;
                Ok(())
            }
            _ => Err(self.error("expected a JSON value")),
        }
    }

    /// Skips an object or array by matching brackets outside strings, 64 bytes at a time: a block's quotes,
    /// backslashes and brackets become bit masks, the masks say which bytes are inside strings, and only the
    /// brackets outside them are looked at one by one.
    fn skip_container(&mut self) -> Result<(), Error> {
        let input = self.input;
        // One bit per open bracket, 1 for `{`: enough to check that each close matches its open.
        let mut open = [0u64; MAX_DEPTH / 64];
        let mut depth = 0usize;
        let mut in_string = 0u64;
        let mut escaped_next = 0u64;
        let mut padded = [b' '; 64];
        let mut start = self.pos;
        while start < input.len() {
            // The last block is padded with spaces, which are neither escapes nor brackets.
            let (block, real) = match input.get(start..start + 64) {
                Some(block) => (block, u64::MAX),
                None => {
                    let rest = &input[start..];
                    padded[..rest.len()].copy_from_slice(rest);
                    (&padded[..], (1u64 << rest.len()) - 1)
                }
            };
            let masks = Masks::of(block);
            let escaped = escaped_bytes(masks.backslash, &mut escaped_next);
            let mut escapes = escaped & real;
            while escapes != 0 {
                let i = escapes.trailing_zeros() as usize;
                if !ESCAPE_LETTER[usize::from(block[i])] {
                    return Err(self.error_at(start + i, "invalid escape in a string"));
                }
                escapes &= escapes - 1;
            }
            let strings = prefix_xor(masks.quote & !escaped) ^ in_string;
            in_string = ((strings as i64) >> 63) as u64;
            let mut brackets = (masks.open | masks.close) & !strings;
            // An open bracket directly followed by its own close (`{}`, `[]`: the leaves of managedFields) leaves
            // the depth as it was, so such pairs are dropped before the walk below. Not the skip's own opening
            // bracket, which must be seen, and not near the nesting limit, which a pair could cross.
            let mut pairs = masks.open & brackets & ((masks.close & brackets) >> 1);
            if start == self.pos {
                pairs &= !1;
            }
            if self.depth + depth + 64 < MAX_DEPTH {
                while pairs != 0 {
                    let i = pairs.trailing_zeros() as usize;
                    // `{` `}` and `[` `]` differ in bits 1 and 2 alone; a mismatched pair stays, to be reported.
                    if block[i] ^ block[i + 1] == 0b110 {
                        brackets &= !(0b11 << i);
                    }
                    pairs &= pairs - 1;
                }
            }
            while brackets != 0 {
                let i = brackets.trailing_zeros() as usize;
                let bit = 1u64 << i;
                if masks.open & bit != 0 {
                    if self.depth + depth >= MAX_DEPTH {
                        return Err(self.error_at(start + i, "nested too deeply"));
                    }
                    let (word, shift) = (depth / 64, depth % 64);
                    if block[i] == b'{' {
                        open[word] |= 1 << shift;
                    } else {
                        open[word] &= !(1 << shift);
                    }
                    depth += 1;
                } else {
                    let Some(top) = depth.checked_sub(1) else {
                        return Err(self.error_at(start + i, "unmatched closing bracket"));
                    };
                    let is_object = open[top / 64] & (1 << (top % 64)) != 0;
                    if is_object != (block[i] == b'}') {
                        return Err(self.error_at(start + i, "mismatched closing bracket"));
                    }
                    depth = top;
                    if depth == 0 {
                        self.pos = start + i + 1;
                        return Ok(());
                    }
                }
                brackets &= brackets - 1;
            }
            start += 64;
        }
        Err(self.error_at(input.len(), "unexpected end of input"))
    }
}

/// Where a 64-byte block holds each byte that matters to [`Reader::skip_container`], one bit per byte.
struct Masks {
    quote: u64,
    backslash: u64,
    /// `{` and `[`.
    open: u64,
    /// `}` and `]`.
    close: u64,
}

impl Masks {
    #[inline(always)]
    fn of(block: &[u8]) -> Masks {
        let mut m = [0u64; 4];
        for (lane, bytes) in block.chunks_exact(16).enumerate() {
            let Ok(bytes) = <[u8; 16]>::try_from(bytes) else {
                continue;
            };
            let v = u8x16::new(bytes);
            // `[` and `]` differ from `{` and `}` only in bit 5.
            let folded = v | u8x16::splat(0x20);
            let found = [
                v.simd_eq(u8x16::splat(b'"')),
                v.simd_eq(u8x16::splat(b'\\')),
                folded.simd_eq(u8x16::splat(b'{')),
                folded.simd_eq(u8x16::splat(b'}')),
            ];
            for (mask, found) in m.iter_mut().zip(found) {
                *mask |= u64::from(found.to_bitmask()) << (16 * lane);
            }
        }
        let [quote, backslash, open, close] = m;
        Masks {
            quote,
            backslash,
            open,
            close,
        }
    }
}

/// The bytes that follow an escaping backslash (a backslash that is itself escaped escapes nothing);
/// `escaped_next` carries a trailing odd backslash into the next block.
#[inline(always)]
fn escaped_bytes(backslash: u64, escaped_next: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*escaped_next;
    let follows_escape = (backslash << 1) | *escaped_next;
    let odd_starts = backslash & !EVEN & !follows_escape;
    let (even_starts, overflow) = odd_starts.overflowing_add(backslash);
    *escaped_next = u64::from(overflow);
    (EVEN ^ (even_starts << 1)) & follows_escape
}

/// Bit i is the parity of the set bits at or below i: 1 inside a string, counting its opening quote.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

static ESCAPE_LETTER: [bool; 256] = byte_set(b"\"\\/bfnrtu");

/// The first `"`, `\\` or control character at or after `at`, eight bytes at a time: strings in a pod are
/// mostly short, so this beats a `memchr` call per string, and it needs no `unsafe`.
#[inline(always)]
fn string_stop(input: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte that matches; exact up to the first match, which is all trailing_zeros reads.
    let equal = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        x.wrapping_sub(ONES) & !x & HIGH
    };
    let below_space = |word: u64| word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    while let Some(chunk) = input.get(at..at + 8) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).ok()?);
        let found = equal(word, b'"') | equal(word, b'\\') | below_space(word);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    input[at.min(input.len())..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// Writes `value` as the inside of a JSON string, in pieces: the runs that need no escaping as they are, and an
/// escape for each quote, backslash and control character. Shared by the response and the log lines.
pub fn escape(value: &str, mut push: impl FnMut(&str)) {
    let bytes = value.as_bytes();
    let mut start = 0;
    while let Some(stop) = string_stop(bytes, start) {
        // `stop` is at an ASCII byte, so both slices fall on character boundaries.
        push(&value[start..stop]);
        push(match bytes[stop] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            control => CONTROL_ESCAPES[usize::from(control & 0x1f)],
        });
        start = stop + 1;
    }
    push(&value[start..]);
}

/// `value` in decimal, zero-padded to `width` digits, without the formatting machinery: numbers in the patch
/// paths, the pod annotation and the log lines are written on every admission.
pub fn push_decimal(out: &mut String, mut value: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    // Twenty digits hold any u64; wider padding is not needed anywhere.
    let width = width.clamp(1, buf.len());
    while value > 0 || buf.len() - at < width {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    for &digit in &buf[at..] {
        out.push(char::from(digit));
    }
}

/// The escape for each control character, in the short form where JSON has one, as serde_json writes them.
static CONTROL_ESCAPES: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        set[bytes[i] as usize] = true;
        i += 1;
    }
    set
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match self.peek()? {
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'"' => match self.string()? {
                Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
                Cow::Owned(s) => visitor.visit_string(s),
            },
            b'-' | b'0'..=b'9' => self.number(visitor),
            b'[' => {
                self.descend()?;
                self.pos += 1;
                let value = visitor.visit_seq(Elements {
                    reader: &mut *self,
                    first: true,
                })?;
                self.expect(b']', "expected `,` or `]`")?;
                self.depth -= 1;
                Ok(value)
            }
            b'{' => {
                self.descend()?;
                self.pos += 1;
                let value = visitor.visit_map(Entries {
                    reader: &mut *self,
                    first: true,
                })?;
                self.expect(b'}', "expected `,` or `}`")?;
                self.depth -= 1;
                Ok(value)
            }
            _ => Err(self.error("expected a JSON value")),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip_value()?;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Unit variants as strings, which is all a Kubernetes object spells enums as.
        if self.peek()? != b'"' {
            return Err(self.error("expected a string"));
        }
        let variant = self.string()?;
        visitor
            .visit_enum(variant.into_owned().into_deserializer())
            .map_err(|e: Error| self.locate(e))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct Elements<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if !self
            .reader
            .next_item(&mut self.first, b']', "expected `,` or `]`")?
        {
            return Ok(None);
        }
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

struct Entries<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if !self
            .reader
            .next_item(&mut self.first, b'}', "expected `,` or `}`")?
        {
            return Ok(None);
        }
        if self.reader.peek()? != b'"' {
            return Err(self.reader.error("expected a string key"));
        }
        let key = seed.deserialize(Key {
            reader: &mut *self.reader,
        })?;
        self.reader.expect(b':', "expected `:`")?;
        Ok(Some(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.reader)
    }
}

/// An object key: always a string, whatever type the key is read as.
struct Key<'a, 'de> {
    reader: &'a mut Reader<'de>,
}

impl<'de> de::Deserializer<'de> for Key<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.reader.string()? {
            Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
            Cow::Owned(s) => visitor.visit_string(s),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.reader.pos += 1;
        self.reader.pos = self.reader.string_end()?.0 + 1;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    use serde_json::{Value, json};

    #[derive(Debug, Deserialize, PartialEq)]
    struct Picked<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(default)]
        n: Option<i64>,
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#" {"a": [1, -2, 3.5, 1e3, -0.25E-2, 18446744073709551615, -9223372036854775808],
            "b": {"c": null, "d": true, "e": false}, "s": "x\"y\\z\/\b\f\n\r\t\u00e9\ud83d\ude00", "u": "héllo"} "#;
        let ours: Value = from_slice(text.as_bytes()).unwrap();
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn borrows_strings_without_escapes() {
        let text = br#"{"name":"plain","skip":{"deep":[{"x":"]}"}]},"n":7}"#;
        let picked: Picked = from_slice(text).unwrap();
        assert!(matches!(picked.name, Cow::Borrowed("plain")));
        assert_eq!(picked.n, Some(7));
        let escaped: Picked = from_slice(br#"{"name":"a\"b"}"#).unwrap();
        assert_eq!(escaped.name, "a\"b");
    }

    #[test]
    fn skips_empty_containers_wherever_they_fall() {
        // Placed at every offset within a 64-byte block, so pairs split across blocks are covered too.
        for pad in 0..70 {
            let text = format!(
                r#"{{"skip":{{"{}":{{}},"a":[[],{{}},[{{}}]],"b":{{}}}},"e":{{}},"f":[],"name":"n","n":3}}"#,
                "p".repeat(pad)
            );
            let picked: Picked = from_slice(text.as_bytes()).unwrap();
            assert_eq!((picked.name.as_ref(), picked.n), ("n", Some(3)), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_input_with_a_position() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "unexpected end of input at line 1 column 1"),
            (
                b"{\"name\":\"a\"",
                "unexpected end of input at line 1 column 12",
            ),
            (
                b"{\"name\":\"a\"} x",
                "trailing characters after the JSON value at line 1 column 14",
            ),
            (
                b"{\"name\":\"a\",\n\"skip\":[1,2}}",
                "mismatched closing bracket at line 2 column 12",
            ),
            (
                b"{\"name\":\"a\",\"skip\":{\"x\":[}]}}",
                "mismatched closing bracket at line 1 column 26",
            ),
            (
                b"{\"name\":\"a\",\"skip\":{\"x\":{]}}",
                "mismatched closing bracket at line 1 column 26",
            ),
            (
                b"{\"name\":\"a\",\"skip\":{\"x\":{}}",
                "unexpected end of input at line 1 column 28",
            ),
            (
                b"{\"name\":\"a\",\"skip\":\"open}",
                "unterminated string at line 1 column 26",
            ),
            (
                b"{\"name\":\"a\",\"skip\":\"\\q\"}",
                "invalid escape in a string at line 1 column 22",
            ),
            (
                b"{\"name\":\"\\ud800\"}",
                "unpaired surrogate in a \\u escape at line 1 column 16",
            ),
            (b"{\"name\":\"\xff\"}", "invalid UTF-8 at line 1 column 10"),
            (
                b"{\"name\":\"a\",\"n\":01}",
                "invalid number at line 1 column 17",
            ),
            (
                b"{\"name\":\"a\",\"n\":1.}",
                "invalid number at line 1 column 17",
            ),
            (
                b"{\"name\":\"a\" \"n\":1}",
                "expected `,` or `}` at line 1 column 13",
            ),
            (
                b"{\"name\":\"a\",\"n\":\"1\"}",
                "invalid type: string \"1\", expected i64 at line 1 column 20",
            ),
            (b"{\"n\":1}", "missing field `name` at line 1 column 7"),
            (
                b"{\"name\":\"a\tb\"}",
                "control character in a string at line 1 column 11",
            ),
            (
                b"{\"name\":\"a\",\"skip\":nul}",
                "expected a JSON value at line 1 column 20",
            ),
            (
                b"{\"name\":\"a\",}",
                "expected a string key at line 1 column 13",
            ),
        ];
        for (input, want) in cases {
            let got = from_slice::<Picked>(input).unwrap_err().to_string();
            assert_eq!(&got, want, "input {:?}", String::from_utf8_lossy(input));
        }
        let got = from_slice::<Value>(b"[1,]").unwrap_err().to_string();
        assert_eq!(got, "expected a JSON value at line 1 column 4");
    }

    #[test]
    fn bounds_nesting() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(
            from_slice::<Value>(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .starts_with("nested too deeply")
        );
        assert!(
            from_slice::<IgnoredAny>(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .starts_with("nested too deeply")
        );
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        from_slice::<IgnoredAny>(ok.as_bytes()).unwrap();
        from_slice::<Value>(ok.as_bytes()).unwrap();
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1e300f64..1e300).prop_map(|n| json!(n)),
            "(?s).{0,12}".prop_map(Value::String),
            r#"[\[\]{}"\\/:,]{0,6}"#.prop_map(Value::String),
            // Runs of quotes and backslashes that cross 64-byte blocks once escaped.
            r#"[\\"x{]{50,140}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("(?s).{0,8}", inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn escaping_writes_what_serde_json_writes(value in any::<String>(), pad in "[a-z\"\\\\\\n\\u{1}]{0,40}") {
            for value in [value.clone(), format!("{pad}{value}{pad}")] {
                let mut out = String::from("\"");
                escape(&value, |piece| out.push_str(piece));
                out.push('"');
                prop_assert_eq!(&out, &serde_json::to_string(&value).unwrap());
            }
        }
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json(v in value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            let ours: Value = from_slice(&text).unwrap();
            prop_assert_eq!(ours, v.clone());
            // Skipping consumes exactly one value, wherever it sits.
            let wrapped = [b"{\"skip\":".as_slice(), &text, b",\"name\":\"x\"}"].concat();
            let picked: Picked = from_slice(&wrapped).unwrap();
            prop_assert_eq!(picked.name, "x");
        }

        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = from_slice::<Value>(&bytes);
            let _ = from_slice::<Picked>(&bytes);
        }

        #[test]
        fn never_panics_on_damaged_documents(
            v in value(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(b"\"\\{}[]:, x".to_vec())), 1..4),
        ) {
            let mut text = [b"{\"skip\":".as_slice(), &serde_json::to_vec(&v).unwrap(), b",\"name\":\"x\"}"].concat();
            for (at, byte) in damage {
                let at = at.index(text.len());
                text[at] = byte;
            }
            let _ = from_slice::<Value>(&text);
            let _ = from_slice::<Picked>(&text);
            let _ = from_slice::<IgnoredAny>(&text);
        }

        #[test]
        fn never_panics_on_cut_documents(v in value(), cut in any::<prop::sample::Index>()) {
            let text = serde_json::to_vec(&v).unwrap();
            let cut = cut.index(text.len() + 1);
            let _ = from_slice::<Value>(&text[..cut]);
            let _ = from_slice::<IgnoredAny>(&text[..cut]);
        }
    }
}
