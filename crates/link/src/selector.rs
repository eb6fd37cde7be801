//! Selectors: link addresses a person can type, `scheme:address?key=value&key2=value2`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::SelectorError;

/// A parsed selector such as `tcp:[::1]:7878`, `serial:/dev/ttyACM0@3000000` or
/// `mock:a?rate=10MB&delay=5ms`.
///
/// Only the first ':' separates the scheme, so addresses may contain ':'; the
/// first '?' starts the parameters. Every selector accepts `?rate=` (see
/// [`Selector::rate_bytes_per_s`]), applied by the [`Registry`](crate::Registry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// Lowercase scheme naming the driver, e.g. "tcp".
    pub scheme: String,
    /// Driver-specific address, e.g. "192.168.1.7:7878". May be empty.
    pub address: String,
    /// `?key=value` parameters; a bare `?key` has an empty value.
    pub params: BTreeMap<String, String>,
    /// The string as given (trimmed).
    pub raw: String,
}

impl Selector {
    /// Parses `scheme:address?k=v&k2=v2`.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let raw = s.trim();
        let Some((scheme, rest)) = raw.split_once(':') else {
            return Err(SelectorError::MissingScheme {
                input: raw.to_string(),
            });
        };
        let scheme = scheme.to_ascii_lowercase();
        let scheme_ok = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !scheme_ok {
            return Err(SelectorError::BadScheme {
                input: raw.to_string(),
                scheme,
            });
        }
        let (address, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let mut params = BTreeMap::new();
        for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            let bad = |why| SelectorError::BadParamSyntax {
                input: raw.to_string(),
                param: piece.to_string(),
                why,
            };
            if k.is_empty() {
                return Err(bad("the key is empty"));
            }
            if params.insert(k.to_string(), v.to_string()).is_some() {
                return Err(bad("the key is given twice"));
            }
        }
        Ok(Selector {
            scheme,
            address: address.to_string(),
            params,
            raw: raw.to_string(),
        })
    }

    /// Parameter `key` parsed as `T`; `Ok(None)` when absent.
    pub fn param<T: FromStr>(&self, key: &str) -> Result<Option<T>, SelectorError> {
        self.param_with(key, std::any::type_name::<T>(), |v| v.parse::<T>().ok())
    }

    /// The `?rate=` byte-rate cap in bytes per second, if given.
    ///
    /// Accepts plain bytes (`rate=500000`), SI prefixes (`K`=1000, `M`, `G`,
    /// with or without `B`: `10MB`, `10M`), binary prefixes (`KiB`=1024, `MiB`,
    /// `GiB`), decimals (`1.5MB`) and an optional `/s`. Zero is refused.
    pub fn rate_bytes_per_s(&self) -> Result<Option<u64>, SelectorError> {
        let v = self.param_with(
            "rate",
            "a byte rate above zero like 10MB, 512KiB or 1000000",
            |v| parse_bytes(v.strip_suffix("/s").unwrap_or(v)).filter(|&n| n > 0),
        )?;
        Ok(v)
    }

    /// Parameter `key` as a byte count with the same syntax as `rate`
    /// (e.g. `die_after=1MB`); zero is allowed.
    pub fn bytes_param(&self, key: &str) -> Result<Option<u64>, SelectorError> {
        self.param_with(key, "a byte count like 1MB, 64KiB or 4096", parse_bytes)
    }

    /// Parameter `key` as a duration with a unit: `ns`, `us`, `ms`, `s`, `m`
    /// or `h` (e.g. `delay=5ms`, `timeout=10s`, `timeout=1.5s`); a bare `0` is zero.
    pub fn duration_param(&self, key: &str) -> Result<Option<Duration>, SelectorError> {
        self.param_with(
            key,
            "a duration with a unit like 5ms, 2s or 1m",
            parse_duration,
        )
    }

    fn param_with<T>(
        &self,
        key: &str,
        expected: &str,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, SelectorError> {
        match self.params.get(key) {
            None => Ok(None),
            Some(v) => f(v.trim())
                .map(Some)
                .ok_or_else(|| SelectorError::BadParamValue {
                    key: key.to_string(),
                    value: v.clone(),
                    expected: expected.to_string(),
                }),
        }
    }

    /// The same selector with parameter `key` removed (e.g. `rate` once applied).
    pub fn without_param(&self, key: &str) -> Selector {
        let mut s = self.clone();
        s.params.remove(key);
        s.raw = s.to_string();
        s
    }
}

/// Normalized form: lowercase scheme, parameters sorted by key.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme, self.address)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{k}={v}")?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

/// `N`, `N[K|M|G|T][B]` (powers of 1000) or `N[Ki|Mi|Gi|Ti][B]` (powers of 1024).
/// A lowercase `b` (bits) is refused rather than guessed.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.strip_suffix('B').unwrap_or(s);
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let v = (n * mult).round();
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_may_contain_colons() {
        let s = Selector::parse("tcp:[::1]:7878").unwrap();
        assert_eq!(
            (s.scheme.as_str(), s.address.as_str()),
            ("tcp", "[::1]:7878")
        );
        let s = Selector::parse("serial:/dev/ttyACM0@3000000?rate=1M").unwrap();
        assert_eq!(s.address, "/dev/ttyACM0@3000000");
        assert_eq!(s.rate_bytes_per_s().unwrap(), Some(1_000_000));
        let s = Selector::parse("rfcomm:AA:BB:CC:DD:EE:FF/3").unwrap();
        assert_eq!(s.address, "AA:BB:CC:DD:EE:FF/3");
    }

    #[test]
    fn params_parse_and_normalize() {
        let s = Selector::parse(" MOCK:a?rate=10MB&delay=5ms&loss=0.01&flag ").unwrap();
        assert_eq!(s.scheme, "mock");
        assert_eq!(s.param::<f64>("loss").unwrap(), Some(0.01));
        assert_eq!(
            s.duration_param("delay").unwrap(),
            Some(Duration::from_millis(5))
        );
        assert_eq!(s.params["flag"], "");
        assert_eq!(s.to_string(), "mock:a?delay=5ms&flag=&loss=0.01&rate=10MB");
        assert_eq!(s.param::<u32>("missing").unwrap(), None);
    }

    #[test]
    fn rates_accept_si_and_binary_units() {
        let rate = |r: &str| {
            Selector::parse(&format!("mock:x?rate={r}"))
                .unwrap()
                .rate_bytes_per_s()
        };
        assert_eq!(rate("10MB").unwrap(), Some(10_000_000));
        assert_eq!(rate("10M").unwrap(), Some(10_000_000));
        assert_eq!(rate("1KiB").unwrap(), Some(1024));
        assert_eq!(rate("2MiB").unwrap(), Some(2 * 1024 * 1024));
        assert_eq!(rate("1GiB").unwrap(), Some(1 << 30));
        assert_eq!(rate("1.5kB").unwrap(), Some(1500));
        assert_eq!(rate("500").unwrap(), Some(500));
        assert_eq!(rate("500B/s").unwrap(), Some(500));
        for bad in ["0", "10Mb", "fast", "-1MB", ""] {
            let e = rate(bad).unwrap_err().to_string();
            assert!(e.contains("rate=") && e.contains("10MB"), "rate={bad}: {e}");
        }
    }

    #[test]
    fn errors_tell_the_form() {
        let e = Selector::parse("localhost").unwrap_err().to_string();
        assert!(e.contains("scheme:address"), "{e}");
        let e = Selector::parse(":foo").unwrap_err().to_string();
        assert!(e.contains("not start with a scheme"), "{e}");
        let e = Selector::parse("mock:a?x=1&x=2").unwrap_err().to_string();
        assert!(e.contains("twice") && e.contains("?key=value"), "{e}");
        let e = Selector::parse("mock:a?loss=lots")
            .unwrap()
            .param::<f64>("loss")
            .unwrap_err();
        assert!(e.to_string().contains("loss=lots"), "{e}");
        let e = Selector::parse("mock:a?delay=5")
            .unwrap()
            .duration_param("delay")
            .unwrap_err();
        assert!(e.to_string().contains("5ms"), "{e}");
    }
}
