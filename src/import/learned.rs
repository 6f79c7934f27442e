//! The calendar of an import, learned from the rows while they stream.
//!
//! A server computing `SELECT DISTINCT date` before the rows costs a second scan of the table on the cores the
//! import shares with it. Instead, each symbol's files are placed on the dates known when it arrives, and every
//! date is tagged with the epoch that first saw it. When the stream ends the calendar is complete, and only the
//! symbols whose span contains (or follows) a date seen after them are placed again. In practice the first
//! symbols of each connection bring nearly every date, so almost nothing is placed twice; whatever the order,
//! the store is byte-identical to one built from a calendar known in advance (tested).

use parking_lot::Mutex;

use crate::store::calendar::Timestamp;

/// Where a symbol's rows went: calendar indices as known in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placement {
    /// The index of each of the symbol's dates.
    pub index: Vec<usize>,
    /// The calendar these indices refer to: every date first seen in this epoch or before.
    pub epoch: u64,
}

/// Dates seen so far, sorted, each with the epoch that first saw it.
#[derive(Default)]
pub(super) struct LearnedCalendar {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    dates: Vec<(Timestamp, u64)>,
    epoch: u64,
}

impl Inner {
    /// Indices of `dates` (sorted, distinct) in `self.dates`; `Err(missing)` lists those not in it.
    fn find(&self, dates: &[Timestamp]) -> Result<Vec<usize>, Vec<Timestamp>> {
        let Some(&first) = dates.first() else {
            return Ok(Vec::new());
        };
        let mut at = self.dates.partition_point(|&(d, _)| d < first);
        let mut index = Vec::with_capacity(dates.len());
        let mut missing = Vec::new();
        // A symbol's dates are nearly a contiguous run of the calendar: walk it instead of searching each one.
        for &d in dates {
            while at < self.dates.len() && self.dates[at].0 < d {
                at += 1;
            }
            if at < self.dates.len() && self.dates[at].0 == d {
                index.push(at);
            } else {
                missing.push(d);
            }
        }
        if missing.is_empty() {
            Ok(index)
        } else {
            Err(missing)
        }
    }
}

impl LearnedCalendar {
    /// Learns a symbol's dates (sorted, distinct) and places them in the calendar as now known.
    pub fn place(&self, dates: &[Timestamp]) -> Placement {
        let mut inner = self.inner.lock();
        let missing = match inner.find(dates) {
            Ok(index) => {
                return Placement {
                    index,
                    epoch: inner.epoch,
                };
            }
            Err(missing) => missing,
        };
        inner.epoch += 1;
        let epoch = inner.epoch;
        let old = std::mem::take(&mut inner.dates);
        let mut merged = Vec::with_capacity(old.len() + missing.len());
        let mut new = missing.into_iter().peekable();
        for (d, e) in old {
            while let Some(n) = new.next_if(|&n| n < d) {
                merged.push((n, epoch));
            }
            merged.push((d, e));
        }
        merged.extend(new.map(|n| (n, epoch)));
        inner.dates = merged;
        let index = inner.find(dates).expect("every date was just added");
        Placement { index, epoch }
    }

    /// The complete calendar, once every symbol has been placed.
    pub fn finish(self) -> Final {
        let dates = self.inner.into_inner().dates;
        // earliest[e]: the earliest date first seen after epoch e.
        let last_epoch = dates.iter().map(|&(_, e)| e).max().unwrap_or(0) as usize;
        let mut earliest = vec![None::<Timestamp>; last_epoch + 1];
        for &(d, e) in &dates {
            // Dates are sorted, so the first date of each epoch is its earliest.
            if e > 0 && earliest[e as usize - 1].is_none() {
                earliest[e as usize - 1] = Some(d);
            }
        }
        for e in (0..last_epoch).rev() {
            earliest[e] = match (earliest[e], earliest[e + 1]) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Final { dates, earliest }
    }
}

/// The learned calendar when the stream has ended.
pub(super) struct Final {
    dates: Vec<(Timestamp, u64)>,
    earliest: Vec<Option<Timestamp>>,
}

impl Final {
    pub fn dates(&self) -> Vec<Timestamp> {
        self.dates.iter().map(|&(d, _)| d).collect()
    }

    /// How a symbol placed in `epoch` whose last date is `last` must move, or `None` when its files stand: every
    /// date first seen later falls after its span.
    pub fn replacement(&self, epoch: u64, first: Timestamp, last: Timestamp) -> Option<Replace> {
        let later = (*self.earliest.get(epoch as usize)?)?;
        if later > last {
            return None;
        }
        let lo = self.dates.partition_point(|&(d, _)| d < first);
        let hi = self.dates.partition_point(|&(d, _)| d <= last);
        Some(Replace {
            start: lo,
            known: self.dates[lo..hi]
                .iter()
                .map(|&(_, e)| e <= epoch)
                .collect(),
        })
    }
}

/// A symbol's new place: its start index, and for each calendar day of its span whether its old file has a
/// value there (a day first seen after the symbol was placed gets NaN).
#[derive(Debug)]
pub(super) struct Replace {
    pub start: usize,
    pub known: Vec<bool>,
}

impl Replace {
    /// `old` (the symbol's values on the days it knew) spread over its new span.
    pub fn spread(&self, old: &[f32]) -> Option<Vec<f32>> {
        let mut old = old.iter();
        let out: Vec<f32> = self
            .known
            .iter()
            .map(|&k| {
                if k {
                    old.next().copied()
                } else {
                    Some(f32::NAN)
                }
            })
            .collect::<Option<_>>()?;
        old.next().is_none().then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: i64) -> Timestamp {
        crate::store::calendar::parse_timestamp("2020-01-01").unwrap() + chrono::Duration::days(n)
    }

    #[test]
    fn late_dates_move_only_the_symbols_they_touch() {
        let cal = LearnedCalendar::default();
        let a = cal.place(&[day(5), day(7)]); // epoch 1: {5, 7}
        assert_eq!(
            a,
            Placement {
                index: vec![0, 1],
                epoch: 1
            }
        );
        let b = cal.place(&[day(5)]); // nothing new: epoch 1
        assert_eq!(b.epoch, 1);
        let c = cal.place(&[day(6), day(9)]); // epoch 2: {5, 6, 7, 9}
        assert_eq!(
            c,
            Placement {
                index: vec![1, 3],
                epoch: 2
            }
        );
        let d = cal.place(&[day(1)]); // epoch 3
        assert_eq!(d.index, vec![0]);
        let f = cal.finish();
        assert_eq!(f.dates(), vec![day(1), day(5), day(6), day(7), day(9)]);
        // a: day 6 appeared inside its span, day 1 before it
        let r = f.replacement(1, day(5), day(7)).unwrap();
        assert_eq!((r.start, r.known.clone()), (1, vec![true, false, true]));
        let v = r.spread(&[1.0, 2.0]).unwrap();
        assert!(v[0] == 1.0 && v[1].is_nan() && v[2] == 2.0);
        assert!(r.spread(&[1.0]).is_none(), "a file of the wrong length");
        // c: day 1 appeared before it (its start moves)
        let r = f.replacement(2, day(6), day(9)).unwrap();
        assert_eq!((r.start, r.known), (2, vec![true, true, true]));
        // d was last: nothing after it
        assert!(f.replacement(3, day(1), day(1)).is_none());
    }
}
