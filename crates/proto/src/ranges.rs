use crate::error::ProtoError;

/// Half-open range of chunk indices [start, end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// First index in the range.
    pub start: u64,
    /// One past the last index in the range.
    pub end: u64,
}

impl Range {
    /// `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }

    /// Number of indices in the range (0 if `end <= start`).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True if the range holds no index.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A set of chunk indices kept as sorted, disjoint, non-adjacent ranges.
///
/// Index `u64::MAX` cannot be represented in a half-open range and is never
/// stored; chunk indices are far smaller in practice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    // Invariant: every range non-empty; r[i].end < r[i+1].start.
    ranges: Vec<Range>,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet { ranges: Vec::new() }
    }

    /// Every index in `[0, n)`.
    pub fn full(n: u64) -> Self {
        let mut s = RangeSet::new();
        if n > 0 {
            s.ranges.push(Range::new(0, n));
        }
        s
    }

    /// Adds `idx`; true if it was not already present.
    pub fn insert(&mut self, idx: u64) -> bool {
        let Some(next) = idx.checked_add(1) else {
            return false;
        };
        // First range that contains idx or ends right at it.
        let i = self.ranges.partition_point(|r| r.end < idx);
        if let Some(r) = self.ranges.get_mut(i)
            && r.start <= idx
        {
            if idx < r.end {
                return false;
            }
            // idx == r.end: extend, then maybe join the next range.
            r.end = next;
            if let Some(n) = self.ranges.get(i + 1)
                && n.start == next
            {
                let end = n.end;
                self.ranges[i].end = end;
                self.ranges.remove(i + 1);
            }
            return true;
        }
        match self.ranges.get_mut(i) {
            Some(r) if r.start == next => r.start = idx,
            _ => self.ranges.insert(i, Range::new(idx, next)),
        }
        true
    }

    /// Adds every index of `r` (nothing if `r` is empty).
    pub fn insert_range(&mut self, r: Range) {
        if r.is_empty() {
            return;
        }
        // Ranges in lo..hi overlap or touch `r` and are merged with it.
        let lo = self.ranges.partition_point(|x| x.end < r.start);
        let hi = self.ranges.partition_point(|x| x.start <= r.end);
        if lo == hi {
            self.ranges.insert(lo, r);
            return;
        }
        let merged = Range::new(
            r.start.min(self.ranges[lo].start),
            r.end.max(self.ranges[hi - 1].end),
        );
        self.ranges[lo] = merged;
        self.ranges.drain(lo + 1..hi);
    }

    /// Removes `idx`; true if it was present.
    pub fn remove(&mut self, idx: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= idx);
        let Some(r) = self.ranges.get_mut(i) else {
            return false;
        };
        if r.start > idx {
            return false;
        }
        match (r.start == idx, r.end == idx + 1) {
            (true, true) => {
                self.ranges.remove(i);
            }
            (true, false) => r.start += 1,
            (false, true) => r.end -= 1,
            (false, false) => {
                let tail = Range::new(idx + 1, r.end);
                r.end = idx;
                self.ranges.insert(i + 1, tail);
            }
        }
        true
    }

    /// True if `idx` is in the set.
    pub fn contains(&self, idx: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= idx);
        self.ranges.get(i).is_some_and(|r| r.start <= idx)
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(Range::len).sum()
    }

    /// True if the set holds no index.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges: non-empty, sorted, disjoint and non-adjacent.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Every index, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.start..r.end)
    }

    /// `self := self ∪ other`.
    pub fn union(&mut self, other: &RangeSet) {
        if other.ranges.is_empty() {
            return;
        }
        if self.ranges.is_empty() {
            self.ranges.clone_from(&other.ranges);
            return;
        }
        let mut out: Vec<Range> = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let (mut a, mut b) = (
            self.ranges.iter().peekable(),
            other.ranges.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.start <= y.start => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let r = *next.expect("peeked");
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        self.ranges = out;
    }

    /// The indices of `self` not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::with_capacity(self.ranges.len());
        let theirs = &other.ranges;
        let mut j = 0;
        for r in &self.ranges {
            let mut start = r.start;
            // Skip ranges of `other` that end before this one starts.
            while j < theirs.len() && theirs[j].end <= start {
                j += 1;
            }
            let mut k = j;
            while start < r.end {
                match theirs.get(k) {
                    Some(t) if t.start < r.end => {
                        if t.start > start {
                            out.push(Range::new(start, t.start));
                        }
                        start = start.max(t.end);
                        if t.end <= r.end {
                            k += 1;
                        }
                    }
                    _ => {
                        out.push(Range::new(start, r.end));
                        start = r.end;
                    }
                }
            }
            j = k;
        }
        RangeSet { ranges: out }
    }

    /// Smallest index `< n` not in the set.
    pub fn first_missing(&self, n: u64) -> Option<u64> {
        let candidate = match self.ranges.first() {
            Some(r) if r.start == 0 => r.end,
            _ => 0,
        };
        (candidate < n).then_some(candidate)
    }

    /// From wire ranges: must be non-empty each, sorted, disjoint, all `end <= bound`.
    ///
    /// Adjacent ranges are accepted and merged.
    pub fn from_ranges(r: &[Range], bound: u64) -> Result<RangeSet, ProtoError> {
        check_ranges(r.iter().copied(), bound)?;
        let mut ranges: Vec<Range> = Vec::with_capacity(r.len());
        for &x in r {
            match ranges.last_mut() {
                Some(last) if last.end == x.start => last.end = x.end,
                _ => ranges.push(x),
            }
        }
        Ok(RangeSet { ranges })
    }

    /// Serialises the set as little-endian `u64` (start, end) pairs, e.g. for SQLite.
    pub fn to_blob(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.ranges.len() * 16);
        for r in &self.ranges {
            b.extend_from_slice(&r.start.to_le_bytes());
            b.extend_from_slice(&r.end.to_le_bytes());
        }
        b
    }

    /// Parses [`to_blob`](Self::to_blob) output (ranges must be valid as in `from_ranges`).
    pub fn from_blob(b: &[u8]) -> Result<RangeSet, ProtoError> {
        if !b.len().is_multiple_of(16) {
            return Err(ProtoError::Malformed(format!(
                "range blob length {} is not a multiple of 16",
                b.len()
            )));
        }
        let ranges: Vec<Range> = b
            .chunks_exact(16)
            .map(|c| {
                let (s, e) = c.split_at(8);
                Range::new(
                    u64::from_le_bytes(s.try_into().expect("8 bytes")),
                    u64::from_le_bytes(e.try_into().expect("8 bytes")),
                )
            })
            .collect();
        RangeSet::from_ranges(&ranges, u64::MAX)
    }
}

impl FromIterator<u64> for RangeSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut s = RangeSet::new();
        for i in iter {
            s.insert(i);
        }
        s
    }
}

impl Extend<Range> for RangeSet {
    fn extend<I: IntoIterator<Item = Range>>(&mut self, iter: I) {
        for r in iter {
            self.insert_range(r);
        }
    }
}

/// Structural check shared by `RangeSet::from_ranges` and the decoder:
/// each range non-empty, sorted, disjoint, `end <= bound`.
pub(crate) fn check_ranges(r: impl Iterator<Item = Range>, bound: u64) -> Result<(), ProtoError> {
    let mut prev_end: Option<u64> = None;
    for (i, x) in r.enumerate() {
        if x.start >= x.end {
            return Err(ProtoError::BadRanges(format!(
                "range {i} [{}, {}) is empty",
                x.start, x.end
            )));
        }
        if let Some(p) = prev_end
            && x.start < p
        {
            return Err(ProtoError::BadRanges(format!(
                "range {i} [{}, {}) starts before the previous one ends ({p}): unsorted or overlapping",
                x.start, x.end
            )));
        }
        if x.end > bound {
            return Err(ProtoError::OutOfBounds(format!(
                "range {i} [{}, {}) ends past {bound}",
                x.start, x.end
            )));
        }
        prev_end = Some(x.end);
    }
    Ok(())
}
