//! What a text field may hold. Pure rules (no transport, no storage), shared by every service's
//! request validation and by the writer when it has to name the field the database refused.
//!
//! Two kinds of field:
//!
//! - **Identifiers**: codes, keys, ids, region codes, periods, metric keys, domains, task ids,
//!   idempotency keys, page tokens, filters, resource names, URIs. They refuse every code point
//!   that is invisible, reorders text or controls a terminal: every control character (Unicode
//!   Cc: U+0000-U+001F and U+007F-U+009F, so NUL, TAB, CR, LF and ESC too), the bidirectional
//!   controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), every other format
//!   character (Unicode Cf: zero-width space and joiners U+200B-U+200D, word joiner U+2060,
//!   BOM U+FEFF, soft hyphen U+00AD, invisible operators, tag characters U+E0000-U+E007F, ...),
//!   the Hangul fillers that render as nothing (U+115F, U+1160, U+3164, U+FFA0), the line and
//!   paragraph separators U+2028 and U+2029, and the noncharacters (U+FDD0-U+FDEF and the last
//!   two code points of every plane). Why: PostgreSQL refuses NUL outright (inside a shared
//!   group commit it used to fail every other caller's submission), ANSI escapes and CR LF
//!   forge lines in logs and terminals, and bidi or zero-width characters make two different
//!   keys look the same to the person reading them.
//! - **Free text** that people write (notes, retraction reasons, display names): the same
//!   rules, except that LF and TAB are allowed. A note typed in a spreadsheet cell has line
//!   breaks (Alt+Enter gives LF) and pasted tables have tabs; CR is refused, so clients send
//!   line breaks as LF (normalise CR LF before sending).
//!
//! Lone surrogates cannot occur in a Rust `str`. Unassigned code points and private-use
//! characters are allowed: the platform does not carry a Unicode version table, and
//! government systems use the private-use area for rare characters in names (生僻字).
//!
//! A refusal names the first offending code point as `U+XXXX` and its position, and never
//! quotes the text itself (echoing an escape sequence back would carry the attack along).

use std::fmt;

/// Which rules a field follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    /// Codes, keys, ids, names of resources, filters, tokens, URIs.
    Identifier,
    /// What a person writes: notes, reasons, display names (LF and TAB allowed).
    FreeText,
}

/// Why a code point is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CharClass {
    /// Unicode Cc.
    Control,
    /// A bidirectional control: it reorders what is displayed.
    Bidi,
    /// A format character or filler that displays as nothing.
    Invisible,
    /// U+2028 or U+2029: a line break that is not LF.
    LineSeparator,
    /// A code point Unicode reserves as never being a character.
    Noncharacter,
}

impl CharClass {
    fn describe(self) -> &'static str {
        match self {
            CharClass::Control => "a control character",
            CharClass::Bidi => "a bidirectional control",
            CharClass::Invisible => "an invisible format character",
            CharClass::LineSeparator => "a line separator",
            CharClass::Noncharacter => "a noncharacter",
        }
    }
}

/// The first refused code point of a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub ch: char,
    /// Position in characters, counting from 1.
    pub position: usize,
    pub class: CharClass,
    pub kind: TextKind,
}

impl Refused {
    /// `U+0000`.
    pub fn code_point(&self) -> String {
        code_point(self.ch)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self.kind {
            TextKind::Identifier => {
                "identifiers take no control, bidirectional, invisible or noncharacter code points"
            }
            TextKind::FreeText => {
                "text takes no control (except line feed and tab), bidirectional, invisible or \
                 noncharacter code points"
            }
        };
        write!(
            f,
            "{} ({}) at character {}: {rule}",
            self.code_point(),
            self.class.describe(),
            self.position
        )
    }
}

/// `c` as `U+XXXX` (at least four hex digits).
pub fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// Unicode Cf (format characters) as of Unicode 15.1, plus the Hangul fillers and the combining
/// grapheme joiner, which display as nothing too. Bidi controls are listed separately.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),   // soft hyphen
    (0x034F, 0x034F),   // combining grapheme joiner
    (0x0600, 0x0605),   // Arabic number signs
    (0x06DD, 0x06DD),   // Arabic end of ayah
    (0x070F, 0x070F),   // Syriac abbreviation mark
    (0x0890, 0x0891),   // Arabic pound and piastre marks above
    (0x08E2, 0x08E2),   // Arabic disputed end of ayah
    (0x115F, 0x1160),   // Hangul choseong and jungseong fillers
    (0x180E, 0x180E),   // Mongolian vowel separator
    (0x200B, 0x200D),   // zero-width space, non-joiner, joiner
    (0x2060, 0x2064),   // word joiner, invisible operators
    (0x206A, 0x206F),   // deprecated format characters
    (0x3164, 0x3164),   // Hangul filler
    (0xFEFF, 0xFEFF),   // zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),   // half-width Hangul filler
    (0xFFF9, 0xFFFB),   // interlinear annotation
    (0x110BD, 0x110BD), // Kaithi number sign
    (0x110CD, 0x110CD), // Kaithi number sign above
    (0x13430, 0x1343F), // Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3), // shorthand format controls
    (0x1D173, 0x1D17A), // musical symbol format controls
    (0xE0001, 0xE0001), // language tag
    (0xE0020, 0xE007F), // tag characters
];

const BIDI: &[(u32, u32)] = &[
    (0x061C, 0x061C), // Arabic letter mark
    (0x200E, 0x200F), // left-to-right and right-to-left marks
    (0x202A, 0x202E), // embeddings and overrides
    (0x2066, 0x2069), // isolates
];

fn within(ranges: &[(u32, u32)], c: u32) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
}

/// Why `c` is refused in any text field, or None when it is allowed in identifiers (and so in
/// free text too). LF and TAB are `Control` here; free text lets them through.
pub fn classify(c: char) -> Option<CharClass> {
    let n = u32::from(c);
    if c.is_control() {
        Some(CharClass::Control)
    } else if within(BIDI, n) {
        Some(CharClass::Bidi)
    } else if within(INVISIBLE, n) {
        Some(CharClass::Invisible)
    } else if n == 0x2028 || n == 0x2029 {
        Some(CharClass::LineSeparator)
    } else if (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE {
        Some(CharClass::Noncharacter)
    } else {
        None
    }
}

/// The first code point `text` may not hold as a field of `kind`.
pub fn check(text: &str, kind: TextKind) -> Result<(), Refused> {
    for (i, ch) in text.chars().enumerate() {
        if kind == TextKind::FreeText && matches!(ch, '\n' | '\t') {
            continue;
        }
        if let Some(class) = classify(ch) {
            return Err(Refused {
                ch,
                position: i + 1,
                class,
                kind,
            });
        }
    }
    Ok(())
}

/// [`check`] for an identifier.
pub fn check_identifier(text: &str) -> Result<(), Refused> {
    check(text, TextKind::Identifier)
}

/// [`check`] for free text.
pub fn check_free_text(text: &str) -> Result<(), Refused> {
    check(text, TextKind::FreeText)
}

/// True when `text` holds nothing [`check`] refuses for `kind`.
pub fn is_clean(text: &str, kind: TextKind) -> bool {
    check(text, kind).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_every_class() {
        for (text, cp, class, position) in [
            ("a\0b", "U+0000", CharClass::Control, 2),
            ("\u{1b}[31m", "U+001B", CharClass::Control, 1),
            ("key\t", "U+0009", CharClass::Control, 4),
            ("a\r\nb", "U+000D", CharClass::Control, 2),
            ("x\u{85}", "U+0085", CharClass::Control, 2),
            ("\u{7f}", "U+007F", CharClass::Control, 1),
            ("admin\u{202E}nimda", "U+202E", CharClass::Bidi, 6),
            ("a\u{2067}", "U+2067", CharClass::Bidi, 2),
            ("\u{200F}", "U+200F", CharClass::Bidi, 1),
            ("\u{61C}", "U+061C", CharClass::Bidi, 1),
            ("sa\u{200B}mr", "U+200B", CharClass::Invisible, 3),
            ("\u{200D}", "U+200D", CharClass::Invisible, 1),
            ("\u{FEFF}2026", "U+FEFF", CharClass::Invisible, 1),
            ("\u{2060}", "U+2060", CharClass::Invisible, 1),
            ("soft\u{AD}", "U+00AD", CharClass::Invisible, 5),
            ("\u{E0041}", "U+E0041", CharClass::Invisible, 1),
            ("\u{3164}", "U+3164", CharClass::Invisible, 1),
            ("\u{2028}", "U+2028", CharClass::LineSeparator, 1),
            ("\u{FDD0}", "U+FDD0", CharClass::Noncharacter, 1),
            ("\u{FFFE}", "U+FFFE", CharClass::Noncharacter, 1),
            ("\u{10FFFF}", "U+10FFFF", CharClass::Noncharacter, 1),
        ] {
            let r = check_identifier(text).err();
            assert_eq!(r.map(|r| r.code_point()).as_deref(), Some(cp), "{text:?}");
            assert_eq!(r.map(|r| (r.class, r.position)), Some((class, position)));
        }
    }

    #[test]
    fn free_text_allows_line_feed_and_tab_only() {
        assert!(check_free_text("第一行\n第二行\t备注").is_ok());
        for bad in [
            "a\r\nb",
            "\0",
            "\u{1b}[2J",
            "\u{202E}",
            "\u{200B}",
            "\u{2029}",
        ] {
            assert!(check_free_text(bad).is_err(), "{bad:?}");
        }
        assert!(check_identifier("第一行\n第二行").is_err());
    }

    #[test]
    fn ordinary_text_passes() {
        for ok in [
            "",
            "uscc.codes_total",
            "330802",
            "2026-Q1",
            "衢州市 市场监管局",
            "https://example.org/a b?c=d#e",
            "emoji \u{1F600} and variation selector \u{FE0F}",
            "rare name \u{E000} in the private-use area",
            "ideographic variation \u{E0100}",
        ] {
            assert!(check_identifier(ok).is_ok(), "{ok:?}");
            assert!(check_free_text(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn refusals_name_the_code_point_and_never_quote_the_text() {
        let r = check_identifier("ab\u{1b}]0;pwned\u{7}").err();
        let text = r.map(|r| r.to_string()).unwrap_or_default();
        assert!(
            text.starts_with("U+001B (a control character) at character 3"),
            "{text}"
        );
        assert!(!text.contains("pwned"));
        let text = check_free_text("x\u{202E}")
            .err()
            .map(|r| r.to_string())
            .unwrap_or_default();
        assert!(text.contains("except line feed and tab"), "{text}");
    }
}
