//! `RangeSet` operations, wire conversions, and a model check against `BTreeSet<u64>`.

use std::collections::BTreeSet;

use gateway_proto::{ProtoError, Range, RangeSet};
use proptest::prelude::*;

fn set(rs: &[(u64, u64)]) -> RangeSet {
    let mut s = RangeSet::new();
    for &(a, b) in rs {
        s.insert_range(Range::new(a, b));
    }
    s
}

fn pairs(s: &RangeSet) -> Vec<(u64, u64)> {
    s.ranges().iter().map(|r| (r.start, r.end)).collect()
}

#[test]
fn new_and_full() {
    assert!(RangeSet::new().is_empty());
    assert_eq!(RangeSet::full(0), RangeSet::new());
    let f = RangeSet::full(5);
    assert_eq!(pairs(&f), [(0, 5)]);
    assert_eq!(f.count(), 5);
    assert!(f.contains(0) && f.contains(4) && !f.contains(5));
}

#[test]
fn insert_merges_neighbours() {
    let mut s = RangeSet::new();
    assert!(s.insert(5));
    assert!(!s.insert(5));
    assert!(s.insert(7));
    assert_eq!(pairs(&s), [(5, 6), (7, 8)]);
    assert!(s.insert(6));
    assert_eq!(pairs(&s), [(5, 8)]);
    assert!(s.insert(4));
    assert!(s.insert(8));
    assert_eq!(pairs(&s), [(4, 9)]);
    assert!(s.insert(0));
    assert_eq!(pairs(&s), [(0, 1), (4, 9)]);
}

#[test]
fn insert_of_u64_max_is_refused() {
    let mut s = RangeSet::new();
    assert!(!s.insert(u64::MAX));
    assert!(s.is_empty());
    assert!(s.insert(u64::MAX - 1));
    assert!(s.contains(u64::MAX - 1));
}

#[test]
fn insert_range_merges_overlapping_and_adjacent() {
    let mut s = set(&[(0, 2), (5, 7), (10, 12), (20, 22)]);
    s.insert_range(Range::new(2, 10));
    assert_eq!(pairs(&s), [(0, 12), (20, 22)]);
    s.insert_range(Range::new(15, 16));
    assert_eq!(pairs(&s), [(0, 12), (15, 16), (20, 22)]);
    s.insert_range(Range::new(3, 3));
    s.insert_range(Range::new(9, 3));
    assert_eq!(pairs(&s), [(0, 12), (15, 16), (20, 22)]);
    s.insert_range(Range::new(13, 30));
    assert_eq!(pairs(&s), [(0, 12), (13, 30)]);
}

#[test]
fn remove_splits_and_shrinks() {
    let mut s = RangeSet::full(10);
    assert!(s.remove(0));
    assert!(s.remove(9));
    assert!(s.remove(5));
    assert!(!s.remove(5));
    assert!(!s.remove(100));
    assert_eq!(pairs(&s), [(1, 5), (6, 9)]);
    let mut one = set(&[(3, 4)]);
    assert!(one.remove(3));
    assert!(one.is_empty());
}

#[test]
fn iter_lists_every_index() {
    let s = set(&[(1, 3), (7, 9)]);
    assert_eq!(s.iter().collect::<Vec<_>>(), [1, 2, 7, 8]);
    assert_eq!(s.count(), 4);
}

#[test]
fn union_and_difference() {
    let mut a = set(&[(0, 5), (10, 15)]);
    let b = set(&[(3, 11), (20, 21)]);
    assert_eq!(pairs(&a.difference(&b)), [(0, 3), (11, 15)]);
    assert_eq!(pairs(&b.difference(&a)), [(5, 10), (20, 21)]);
    a.union(&b);
    assert_eq!(pairs(&a), [(0, 15), (20, 21)]);
    assert!(a.difference(&a).is_empty());
    assert_eq!(a.difference(&RangeSet::new()), a);
}

#[test]
fn first_missing_finds_the_smallest_gap() {
    assert_eq!(RangeSet::new().first_missing(3), Some(0));
    assert_eq!(RangeSet::new().first_missing(0), None);
    assert_eq!(set(&[(0, 4), (5, 6)]).first_missing(10), Some(4));
    assert_eq!(set(&[(0, 4)]).first_missing(4), None);
    assert_eq!(set(&[(1, 4)]).first_missing(4), Some(0));
}

#[test]
fn from_ranges_accepts_sorted_disjoint_in_bounds_and_merges_adjacent() {
    let s = RangeSet::from_ranges(&[Range::new(0, 2), Range::new(2, 3), Range::new(5, 10)], 10)
        .unwrap();
    assert_eq!(pairs(&s), [(0, 3), (5, 10)]);
    assert!(RangeSet::from_ranges(&[], 0).unwrap().is_empty());
}

#[test]
fn from_ranges_rejects_range_past_bound() {
    let err = RangeSet::from_ranges(&[Range::new(0, 11)], 10).unwrap_err();
    assert!(matches!(err, ProtoError::OutOfBounds(_)), "{err:?}");
}

#[test]
fn from_ranges_rejects_empty_unsorted_and_overlapping() {
    for rs in [
        vec![Range::new(2, 2)],
        vec![Range::new(3, 2)],
        vec![Range::new(5, 6), Range::new(1, 2)],
        vec![Range::new(0, 5), Range::new(4, 6)],
        vec![Range::new(0, 5), Range::new(0, 5)],
    ] {
        let err = RangeSet::from_ranges(&rs, 100).unwrap_err();
        assert!(matches!(err, ProtoError::BadRanges(_)), "{rs:?}: {err:?}");
    }
}

#[test]
fn blob_round_trips() {
    for s in [
        RangeSet::new(),
        RangeSet::full(1),
        set(&[(0, 3), (9, 12), (u64::MAX - 2, u64::MAX)]),
    ] {
        let b = s.to_blob();
        assert_eq!(b.len(), s.ranges().len() * 16);
        assert_eq!(RangeSet::from_blob(&b).unwrap(), s);
    }
    assert_eq!(
        set(&[(1, 2)]).to_blob(),
        [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn from_blob_rejects_bad_length_and_bad_ranges() {
    assert!(matches!(
        RangeSet::from_blob(&[0; 15]),
        Err(ProtoError::Malformed(_))
    ));
    let mut b = set(&[(5, 6)]).to_blob();
    b.extend(set(&[(1, 2)]).to_blob());
    assert!(matches!(
        RangeSet::from_blob(&b),
        Err(ProtoError::BadRanges(_))
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64),
    InsertRange(u64, u64),
    Remove(u64),
    Union(Vec<(u64, u64)>),
    Difference(Vec<(u64, u64)>),
}

fn op() -> impl Strategy<Value = Op> {
    let idx = 0u64..64;
    let rs = prop::collection::vec((0u64..64, 0u64..8), 0..5)
        .prop_map(|v| v.into_iter().map(|(a, l)| (a, a + l)).collect::<Vec<_>>());
    prop_oneof![
        idx.clone().prop_map(Op::Insert),
        (0u64..64, 0u64..12).prop_map(|(a, l)| Op::InsertRange(a, a + l)),
        idx.prop_map(Op::Remove),
        rs.clone().prop_map(Op::Union),
        rs.prop_map(Op::Difference),
    ]
}

fn model_of(rs: &[(u64, u64)]) -> BTreeSet<u64> {
    rs.iter().flat_map(|&(a, b)| a..b).collect()
}

fn check_invariants(s: &RangeSet) {
    for r in s.ranges() {
        assert!(r.start < r.end, "empty range in {s:?}");
    }
    for w in s.ranges().windows(2) {
        assert!(w[0].end < w[1].start, "unsorted or adjacent in {s:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rangeset_behaves_like_a_btreeset(ops in prop::collection::vec(op(), 0..60)) {
        let mut s = RangeSet::new();
        let mut m = BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(i) => prop_assert_eq!(s.insert(i), m.insert(i)),
                Op::InsertRange(a, b) => {
                    s.insert_range(Range::new(a, b));
                    m.extend(a..b);
                }
                Op::Remove(i) => prop_assert_eq!(s.remove(i), m.remove(&i)),
                Op::Union(rs) => {
                    s.union(&set(&rs));
                    m.extend(model_of(&rs));
                }
                Op::Difference(rs) => {
                    s = s.difference(&set(&rs));
                    let other = model_of(&rs);
                    m.retain(|x| !other.contains(x));
                }
            }
            check_invariants(&s);
            prop_assert_eq!(s.iter().collect::<Vec<_>>(), m.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(s.count(), m.len() as u64);
            prop_assert_eq!(s.is_empty(), m.is_empty());
            for i in 0..80 {
                prop_assert_eq!(s.contains(i), m.contains(&i));
            }
            let n = 70;
            prop_assert_eq!(s.first_missing(n), (0..n).find(|i| !m.contains(i)));
            prop_assert_eq!(&RangeSet::from_blob(&s.to_blob()).unwrap(), &s);
            prop_assert_eq!(&RangeSet::from_ranges(s.ranges(), 80).unwrap(), &s);
        }
    }

    #[test]
    fn from_ranges_accepts_exactly_the_valid_lists(
        raw in prop::collection::vec((0u64..40, 0u64..40), 0..6),
        bound in 0u64..45,
    ) {
        let rs: Vec<Range> = raw.iter().map(|&(a, b)| Range::new(a, b)).collect();
        let valid = rs.iter().all(|r| r.start < r.end && r.end <= bound)
            && rs.windows(2).all(|w| w[0].end <= w[1].start);
        match RangeSet::from_ranges(&rs, bound) {
            Ok(s) => {
                prop_assert!(valid);
                check_invariants(&s);
                let want: BTreeSet<u64> = rs.iter().flat_map(|r| r.start..r.end).collect();
                prop_assert_eq!(s.iter().collect::<BTreeSet<_>>(), want);
            }
            Err(_) => prop_assert!(!valid),
        }
    }
}
