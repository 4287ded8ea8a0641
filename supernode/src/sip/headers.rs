//! Small parsers for header values rsip leaves as strings: name-addr lists, URI parts,
//! parameters. They never panic and never allocate more than the parts they return.

/// Splits a comma-separated header value (Contact, Via, Route lists) at the commas
/// that are outside quoted strings and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut escape) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escape {
            escape = false;
            continue;
        }
        match c {
            '\\' if quoted => escape = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// A `name-addr` or `addr-spec` with its header parameters (RFC 3261 §20.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The URI, without angle brackets.
    pub uri: &'a str,
    /// Header parameters after the URI (`;expires=60;q=0.5`), names lower-cased by
    /// the caller's comparisons.
    pub params: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> NameAddr<'a> {
    /// Parses one element of a Contact/From/To/Route value.
    pub fn parse(value: &'a str) -> Option<Self> {
        let value = value.trim();
        let (uri, rest) = if let Some(open) = find_unquoted(value, '<') {
            let close = value[open..].find('>')? + open;
            (&value[open + 1..close], &value[close + 1..])
        } else {
            // addr-spec: header params start at the first ';' (URI params cannot be
            // told apart here, RFC 3261 §20).
            match value.find(';') {
                Some(i) => (&value[..i], &value[i..]),
                None => (value, ""),
            }
        };
        if uri.is_empty() {
            return None;
        }
        Some(NameAddr {
            uri: uri.trim(),
            params: params(rest),
        })
    }

    /// A header parameter's value by case-insensitive name (`Some(None)` for a flag).
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

fn find_unquoted(s: &str, target: char) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == target && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parses `;a=b;c` into pairs (values unquoted).
pub fn params(s: &str) -> Vec<(&str, Option<&str>)> {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        })
        .collect()
}

/// The parts of a `sip:`/`sips:` URI this node routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriParts<'a> {
    /// `sip` or `sips` (lower-case as written).
    pub scheme: &'a str,
    /// The user part, if any.
    pub user: Option<&'a str>,
    /// Host name or address (IPv6 without brackets).
    pub host: &'a str,
    /// Port, if given.
    pub port: Option<u16>,
    /// URI parameters.
    pub params: Vec<(&'a str, Option<&'a str>)>,
}

/// Splits a SIP URI; `None` for other schemes or a malformed one.
pub fn uri_parts(uri: &str) -> Option<UriParts<'_>> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let rest = rest.split('?').next().unwrap_or(rest);
    let (hostpart, uri_params) = match rest.find(';') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, hostport) = match hostpart.rfind('@') {
        Some(i) => (Some(&hostpart[..i]), &hostpart[i + 1..]),
        None => (None, hostpart),
    };
    let user = user.map(|u| u.split(':').next().unwrap_or(u));
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let close = v6.find(']')?;
        let port = v6[close + 1..].strip_prefix(':');
        (&v6[..close], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some(UriParts {
        scheme,
        user,
        host,
        port,
        params: params(uri_params),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_split_outside_quotes_and_brackets() {
        let v = r#""Doe, John" <sip:j@x;a=b,c>;expires=60, <sip:k@y>;q=0.5 , sip:z@w"#;
        let parts = split_list(v);
        assert_eq!(parts.len(), 3);
        let a = NameAddr::parse(parts[0]).unwrap();
        assert_eq!(a.uri, "sip:j@x;a=b,c");
        assert_eq!(a.param("EXPIRES"), Some(Some("60")));
        let b = NameAddr::parse(parts[1]).unwrap();
        assert_eq!(b.param("q"), Some(Some("0.5")));
        let c = NameAddr::parse(parts[2]).unwrap();
        assert_eq!(c.uri, "sip:z@w");
    }

    #[test]
    fn instance_params_are_unquoted() {
        let a =
            NameAddr::parse(r#"<sip:a@1.2.3.4>;+sip.instance="<urn:uuid:1>";reg-id=1"#).unwrap();
        assert_eq!(a.param("+sip.instance"), Some(Some("<urn:uuid:1>")));
        assert_eq!(a.param("reg-id"), Some(Some("1")));
    }

    #[test]
    fn uris_split_into_parts() {
        let u = uri_parts("sip:alice:pw@Example.org:5070;transport=tcp?subject=x").unwrap();
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.host, "Example.org");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params, vec![("transport", Some("tcp"))]);
        let v6 = uri_parts("sip:[::1]:5060").unwrap();
        assert_eq!((v6.host, v6.port), ("::1", Some(5060)));
        assert!(uri_parts("tel:+123").is_none());
        assert!(uri_parts("sip:a@host:notaport").is_none());
        assert!(uri_parts("sip:").is_none());
    }

    proptest! {
        #[test]
        fn never_panic(s in ".{0,200}") {
            let _ = split_list(&s);
            let _ = NameAddr::parse(&s);
            let _ = uri_parts(&s);
        }
    }
}
