//! What the documentation pages (README.md, docs/*.md) name, read from their Markdown: links,
//! heading anchors, inline code and code blocks. Pure: `integration/tests/docs.rs` checks what
//! it finds against the repository, the binaries' `--help` and the configuration examples.
//!
//! Only the Markdown the pages use is understood: ATX headings, fenced code blocks, inline code
//! spans (which may run over a line break), inline links `[text](target)`, and HTML comments,
//! which are skipped (the lead's markers for pages still to come live there).

/// One page's parts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The anchors its headings get on GitHub, in order (duplicates numbered `-1`, `-2`).
    pub anchors: Vec<String>,
    /// Targets of its inline links, with the line they start on.
    pub links: Vec<(usize, String)>,
    /// Its inline code spans (line breaks inside one read as spaces), with their line.
    pub spans: Vec<(usize, String)>,
    /// Its fenced code blocks: line of the opening fence, info string, text.
    pub blocks: Vec<Block>,
}

/// A fenced code block.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    pub line: usize,
    pub info: String,
    pub text: String,
}

/// Reads a page.
pub fn parse(text: &str) -> Page {
    let mut page = Page::default();
    // Prose with code blocks and comments blanked (line breaks kept, for line numbers).
    let mut prose = String::with_capacity(text.len());
    let mut fence: Option<(String, Block)> = None;
    let mut in_comment = false;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if let Some((marker, block)) = fence.as_mut() {
            if line.trim_start().starts_with(marker.as_str()) && line.trim() == marker.as_str() {
                let (_, block) = fence.take().expect("in a fence");
                page.blocks.push(block);
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            prose.push('\n');
            continue;
        }
        let trimmed = line.trim_start();
        if !in_comment && (trimmed.starts_with("```") || trimmed.starts_with("~~~")) {
            let marker: String = trimmed
                .chars()
                .take_while(|&c| c == trimmed.as_bytes()[0] as char)
                .collect();
            let info = trimmed[marker.len()..].trim().to_string();
            fence = Some((
                marker,
                Block {
                    line: number,
                    info,
                    text: String::new(),
                },
            ));
            prose.push('\n');
            continue;
        }
        let (kept, still_in_comment) = strip_comments(line, in_comment);
        in_comment = still_in_comment;
        if let Some(heading) = heading(&kept) {
            let slug = slug(&heading);
            let taken = page
                .anchors
                .iter()
                .filter(|a| **a == slug || is_numbered(a, &slug))
                .count();
            page.anchors.push(if taken == 0 {
                slug
            } else {
                format!("{slug}-{taken}")
            });
        }
        prose.push_str(&kept);
        prose.push('\n');
    }
    scan_inline(&prose, &mut page);
    page
}

/// `line` without the parts inside `<!-- -->`, and whether a comment is still open at its end.
fn strip_comments(line: &str, mut in_comment: bool) -> (String, bool) {
    let mut out = String::new();
    let mut rest = line;
    loop {
        if in_comment {
            match rest.find("-->") {
                Some(end) => {
                    rest = &rest[end + 3..];
                    in_comment = false;
                }
                None => return (out, true),
            }
        } else {
            match rest.find("<!--") {
                Some(start) => {
                    out.push_str(&rest[..start]);
                    rest = &rest[start + 4..];
                    in_comment = true;
                }
                None => {
                    out.push_str(rest);
                    return (out, false);
                }
            }
        }
    }
}

/// The text of an ATX heading line.
fn heading(line: &str) -> Option<String> {
    let hashes = line.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
        return None;
    }
    Some(
        line[hashes..]
            .trim()
            .trim_end_matches('#')
            .trim()
            .to_string(),
    )
}

fn is_numbered(anchor: &str, slug: &str) -> bool {
    anchor
        .strip_prefix(slug)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The anchor GitHub gives a heading: its text as rendered (code marks and link targets
/// dropped), lower case, without punctuation but `-` and `_`, spaces as `-`.
pub fn slug(heading: &str) -> String {
    let mut rendered = String::new();
    let mut chars = heading.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // [text](target): keep the text, drop the target.
            ']' if chars.peek() == Some(&'(') => {
                for c in chars.by_ref() {
                    if c == ')' {
                        break;
                    }
                }
            }
            '`' | '[' | '*' => {}
            c => rendered.push(c),
        }
    }
    rendered
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Code spans and links of the prose.
fn scan_inline(prose: &str, page: &mut Page) {
    let bytes = prose.as_bytes();
    let line_of = |at: usize| 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'`' => {
                let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
                let start = i + run;
                match closing_run(bytes, start, run) {
                    Some(end) => {
                        let span = prose[start..end].replace('\n', " ");
                        page.spans.push((line_of(i), span.trim().to_string()));
                        i = end + run;
                    }
                    // An unmatched run is literal text.
                    None => i = start,
                }
            }
            b']' if bytes.get(i + 1) == Some(&b'(') => {
                let start = i + 2;
                match prose[start..].find(')') {
                    Some(len) => {
                        page.links
                            .push((line_of(i), prose[start..start + len].trim().to_string()));
                        i = start + len + 1;
                    }
                    None => i = start,
                }
            }
            _ => i += 1,
        }
    }
}

/// Where the run of exactly `run` backticks closing a span opened before `from` starts.
fn closing_run(bytes: &[u8], from: usize, run: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let len = bytes[i..].iter().take_while(|&&b| b == b'`').count();
            if len == run {
                return Some(i);
            }
            i += len;
        } else if bytes[i] == b'\n' && bytes.get(i + 1) == Some(&b'\n') {
            // A span does not cross a paragraph.
            return None;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(slug("One node: CRI pull"), "one-node-cri-pull");
        assert_eq!(
            slug("Health and `shoald status`"),
            "health-and-shoald-status"
        );
        assert_eq!(
            slug("BitTorrent export (optional)"),
            "bittorrent-export-optional"
        );
        assert_eq!(
            slug("`shoald containerd-config`"),
            "shoald-containerd-config"
        );
        assert_eq!(slug("See [the swarm](docs/swarm.md)"), "see-the-swarm");
        assert_eq!(slug("hot_cache & more"), "hot_cache--more");
    }

    #[test]
    fn pages_give_anchors_links_spans_and_blocks() {
        let page = parse(
            "# Title\n\nText with `code\nover a break` and [a link](docs/x.md#part).\n\
             <!-- lead: [not](a/link.md) `nor code` -->\n\
             <!-- two\n[lines](b.md)\n-->\n\
             ## Title\n\n```sh\nshoald doctor\n# [not a link](c.md)\n```\n\n## Title\n\
             An unmatched `` double run, then `x`.\n",
        );
        assert_eq!(page.anchors, ["title", "title-1", "title-2"]);
        assert_eq!(page.links, [(4, "docs/x.md#part".to_string())]);
        assert_eq!(
            page.spans,
            [(3, "code over a break".to_string()), (17, "x".to_string())]
        );
        assert_eq!(
            page.blocks,
            [Block {
                line: 11,
                info: "sh".into(),
                text: "shoald doctor\n# [not a link](c.md)\n".into()
            }]
        );
    }

    #[test]
    fn a_span_does_not_cross_a_paragraph() {
        let page = parse("a ` b\n\nc ` d `e`\n");
        assert_eq!(page.spans, [(3, "d".to_string())]);
    }
}
