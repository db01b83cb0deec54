//! File name patterns as Go's `filepath.Match` reads them: `*` (any run of characters),
//! `?` (one character), `[abc]`, `[a-z]`, `[^a-z]`, and `\` to quote the next character.
//! Patterns match the file's base name; a pattern with a `/` matches the path relative to
//! the watched directory.

/// True when `name` matches `pattern` (a malformed class never matches).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_at(&p, &n)
}

fn match_at(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it has taken up to: backtracking point.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((ok, len)) = class(&p[pi..], n[ni]) {
                        if ok {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    } else {
                        return false;
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                '\\' if pi + 1 < p.len() => {}
                c if c != '?' && c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last `*` take one more character (never a `/`, as in Go).
        match star {
            Some((sp, sn)) if n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at the start of `p`: whether `c` is in it, and the class's length.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        let lo = if lo == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            lo
        };
        i += 1;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&h| h != ']') {
            let hi = p[i + 1];
            i += 2;
            hit |= lo <= c && c <= hi;
        } else {
            hit |= lo == c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn go_filepath_match_cases() {
        for (p, n, want) in [
            ("*.log", "app.log", true),
            ("*.log", "app.log.1", false),
            ("*.gz", "app.log.1.gz", true),
            ("syslog*", "syslog", true),
            ("syslog*", "syslog.1", true),
            ("*secret*", "my-secret.txt", true),
            ("*~", "notes~", true),
            ("app-?.txt", "app-1.txt", true),
            ("app-?.txt", "app-12.txt", false),
            ("[a-c]*.log", "b.log", true),
            ("[^a-c]*.log", "b.log", false),
            ("*.log", "sub/app.log", false),
            ("sub/*.log", "sub/app.log", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*", "", true),
            ("[", "a", false),
        ] {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
    }
}
