//! BENCHMARKS.md keeps the latest full run per CPU model, a section each, so that a regression
//! on one CPU family cannot hide behind the other: a run replaces only its own model's section
//! (between two HTML comments naming the model) and the common preamble above the first
//! section; other models' sections and any text after the last section stay as they are.

/// The comment that opens (or, with `end`, closes) `model`'s section.
fn marker(model: &str, end: bool) -> String {
    // Models come from /proc/cpuinfo; keep them from closing the comment early.
    let model = model.replace("--", "- -");
    if end {
        format!("<!-- shmem-bench end of CPU section: {model} -->")
    } else {
        format!("<!-- shmem-bench CPU section: {model} -->")
    }
}

/// The first opening marker of any section.
const ANY_SECTION: &str = "<!-- shmem-bench CPU section: ";
const ANY_END: &str = "<!-- shmem-bench end of CPU section: ";

/// `existing` (the file as it was, if any) with the preamble and `model`'s section replaced by
/// the new ones. A file without sections (the format before per-CPU sections, or another
/// file) is replaced whole.
pub fn merge(existing: Option<&str>, preamble: &str, model: &str, section: &str) -> String {
    let (start, end) = (marker(model, false), marker(model, true));
    let ours = format!("{start}\n\n{}\n\n{end}\n", section.trim_end());
    let Some(existing) = existing.filter(|e| e.contains(ANY_SECTION)) else {
        return format!("{}\n\n{ours}", preamble.trim_end());
    };
    let first = existing.find(ANY_SECTION).unwrap_or(0);
    let body = &existing[first..];
    let body = match (body.find(&start), body.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            let after = &body[b + end.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{ours}{after}", &body[..a])
        }
        _ => {
            // A model not seen before: after the last section.
            let cut = body
                .rfind(ANY_END)
                .and_then(|at| body[at..].find('\n').map(|nl| at + nl + 1))
                .unwrap_or(body.len());
            format!("{}\n{ours}{}", &body[..cut], &body[cut..])
        }
    };
    format!("{}\n\n{body}", preamble.trim_end())
}

/// Headings one level down (`##` -> `###`), outside code blocks: a run's sections sit under
/// its CPU model's heading.
pub fn demote(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() + 64);
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with("##") {
            out.push('#');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A file-name-friendly form of a CPU model: `AMD EPYC` -> `amd-epyc`.
pub fn slug(model: &str) -> String {
    let mut out = String::new();
    for c in model.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "unknown-cpu".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replaces_only_its_own_section() {
        let first = merge(None, "# T\nintro v1", "AMD EPYC", "## AMD EPYC\nold amd");
        let both = merge(
            Some(&first),
            "# T\nintro v2",
            "Intel Xeon",
            "## Intel Xeon\nintel",
        );
        let hand = format!("{both}\n## Notes by hand\nkept\n");
        let again = merge(
            Some(&hand),
            "# T\nintro v3",
            "AMD EPYC",
            "## AMD EPYC\nnew amd",
        );
        assert!(again.starts_with("# T\nintro v3\n\n"), "{again}");
        assert!(
            again.contains("new amd") && !again.contains("old amd"),
            "{again}"
        );
        assert!(again.contains("## Intel Xeon\nintel"), "{again}");
        assert!(again.contains("## Notes by hand\nkept"), "{again}");
        assert!(
            !again.contains("intro v1") && !again.contains("intro v2"),
            "{again}"
        );
        // The AMD section stays where it was (first), Intel after it.
        assert!(again.find("new amd") < again.find("intel"), "{again}");
        assert_eq!(again.matches(ANY_SECTION).count(), 2, "{again}");
    }

    #[test]
    fn a_file_without_sections_is_replaced() {
        let merged = merge(Some("# old report\n"), "# T", "AMD EPYC", "## AMD EPYC\nx");
        assert!(!merged.contains("old report"));
        assert!(merged.contains(&marker("AMD EPYC", false)));
    }

    #[test]
    fn headings_go_down_one_level_outside_code() {
        let md = "## A\ntext\n```sh\n## not a heading\n```\n### B\n";
        assert_eq!(
            demote(md),
            "### A\ntext\n```sh\n## not a heading\n```\n#### B\n"
        );
        assert_eq!(
            slug("Intel(R) Xeon(R) Processor"),
            "intel-r-xeon-r-processor"
        );
        assert_eq!(slug("AMD EPYC"), "amd-epyc");
    }
}
