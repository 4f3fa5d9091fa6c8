//! Calling windows, sans-IO: whether a campaign (or one callee) may be
//! dialled at a given instant, and until or from when.
//!
//! A [`Plan`] is parsed once from the campaign's [`Schedule`]; its
//! [`Plan::state`] is a pure function of the instant passed in (no clock is
//! read), so the dispatcher runs it on a virtual clock in its tests.
//!
//! A window `from`-`to` on a day is the instants from the first instant the
//! local clock reads `from` on that day up to (excluding) the first instant
//! it reads `to` (`24:00`: the next day's midnight). Across a change of the
//! clocks this means:
//!
//! - a boundary in a skipped hour (spring forward) is the instant of the
//!   change: 01:30-03:00 on a day the clocks go from 02:00 to 03:00 is open
//!   for 30 minutes, and 02:15-02:45 does not open that day;
//! - a boundary in a repeated hour (fall back) is its first occurrence:
//!   01:30-03:00 on a day the clocks go from 02:00 back to 01:00 is open for
//!   two and a half hours, and no window opens twice in one day.
//!
//! Windows that overlap or touch (Fri 22:00-24:00 and Sat 00:00-06:00) are
//! one opening: [`WindowState::Open::closes`] is when calls really stop.

use jiff::civil::{Date, DateTime, Time, Weekday as JiffWeekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

use crate::crd::{Schedule, Weekday};

/// Days searched for the next opening or closing, counted from the local
/// date of the instant asked about. Two weeks (and a day before) cover every
/// weekday twice, so a window whose one instance a change of the clocks
/// removed (02:15-02:45 on the day the clocks skip 02:00-03:00) is still
/// found a week later; an opening that lasts the whole horizon lasts forever
/// (every weekday is covered from midnight to midnight).
const HORIZON_DAYS: i32 = 16;

/// Minutes in a day: a window's `to` of `24:00`.
const DAY_MINUTES: u16 = 24 * 60;

/// A schedule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The time zone is not in the time zone database.
    #[error("{field}: unknown time zone {name:?}")]
    UnknownZone {
        /// Where the name was given, e.g. `schedule.timeZone`.
        field: &'static str,
        /// The name as given.
        name: String,
        /// Why the lookup failed.
        #[source]
        source: jiff::Error,
    },
    /// A window's `from` or `to` is not a time of day.
    #[error("schedule.windows[{index}].{field}: {value:?} is not a time of day \"HH:MM\"")]
    BadTime {
        /// The window's position in `schedule.windows`.
        index: usize,
        /// `from` or `to`.
        field: &'static str,
        /// The value as given.
        value: String,
    },
    /// A window's `from` is not before its `to`.
    #[error("schedule.windows[{index}]: from {from:?} is not before to {to:?}")]
    EmptyWindow {
        /// The window's position in `schedule.windows`.
        index: usize,
        /// The window's `from`.
        from: String,
        /// The window's `to`.
        to: String,
    },
    /// `startTime` is not before `endTime`.
    #[error("schedule.startTime {start} is not before endTime {end}")]
    StartNotBeforeEnd {
        /// `startTime`.
        start: Timestamp,
        /// `endTime`.
        end: Timestamp,
    },
}

/// Looks up an IANA time zone, e.g. a callee's `timeZone`; the error names
/// the zone (the caller says whose it is).
pub fn zone(name: &str) -> Result<TimeZone, ScheduleError> {
    lookup("timeZone", name)
}

fn lookup(field: &'static str, name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|source| ScheduleError::UnknownZone {
        field,
        name: name.to_owned(),
        source,
    })
}

/// Whether calls may start at an instant, and the next boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Calls may start now, until `closes` (exclusive): the end of the
    /// current window (or of adjoining windows), or `endTime`. `None`: open
    /// for good (the windows cover every day and there is no `endTime`).
    Open {
        /// When calls stop being allowed.
        closes: Option<Timestamp>,
    },
    /// Between windows: calls may start again at `opens` (before `endTime`).
    Closed {
        /// When the next window opens.
        opens: Timestamp,
    },
    /// Before `startTime`: calls may first start at `opens` (`startTime`, or
    /// the first window after it).
    NotYet {
        /// When the first window opens.
        opens: Timestamp,
    },
    /// No call may start any more: `endTime` has passed, or no window opens
    /// before it.
    Ended,
}

impl WindowState {
    /// Whether calls may start now.
    pub fn is_open(&self) -> bool {
        matches!(self, WindowState::Open { .. })
    }
}

/// One window in local time: a set of weekdays and a minute range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Local {
    /// Bit `n` set: applies on the weekday `n` days after Monday.
    days: u8,
    /// Minutes after midnight, inclusive.
    from: u16,
    /// Minutes after midnight, exclusive; at most [`DAY_MINUTES`].
    to: u16,
}

impl Local {
    fn applies(&self, day: JiffWeekday) -> bool {
        let bit = day.to_monday_zero_offset();
        // to_monday_zero_offset is 0..=6.
        self.days & (1u8 << bit.unsigned_abs()) != 0
    }
}

/// A campaign's calling windows, parsed.
#[derive(Clone, Debug)]
pub struct Plan {
    zone: TimeZone,
    windows: Vec<Local>,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
}

impl Plan {
    /// Parses a campaign's schedule (`None`: any time, in UTC).
    pub fn new(schedule: Option<&Schedule>) -> Result<Plan, ScheduleError> {
        let Some(schedule) = schedule else {
            return Ok(Plan {
                zone: TimeZone::UTC,
                windows: Vec::new(),
                start: None,
                end: None,
            });
        };
        let zone = lookup("schedule.timeZone", &schedule.time_zone)?;
        let mut windows = Vec::with_capacity(schedule.windows.len());
        for (index, window) in schedule.windows.iter().enumerate() {
            let bad = |field: &'static str, value: &str| ScheduleError::BadTime {
                index,
                field,
                value: value.to_owned(),
            };
            let from = minutes(&window.from, false).ok_or_else(|| bad("from", &window.from))?;
            let to = minutes(&window.to, true).ok_or_else(|| bad("to", &window.to))?;
            if from >= to {
                return Err(ScheduleError::EmptyWindow {
                    index,
                    from: window.from.clone(),
                    to: window.to.clone(),
                });
            }
            let days = if window.days.is_empty() {
                0b111_1111
            } else {
                window.days.iter().fold(0u8, |acc, day| acc | day_bit(*day))
            };
            windows.push(Local { days, from, to });
        }
        let start = schedule.start_time.as_ref().map(|t| t.0);
        let end = schedule.end_time.as_ref().map(|t| t.0);
        if let (Some(start), Some(end)) = (start, end)
            && start >= end
        {
            return Err(ScheduleError::StartNotBeforeEnd { start, end });
        }
        Ok(Plan {
            zone,
            windows,
            start,
            end,
        })
    }

    /// The schedule's time zone (UTC when none is given).
    pub fn time_zone(&self) -> &TimeZone {
        &self.zone
    }

    /// `startTime`, if any.
    pub fn start(&self) -> Option<Timestamp> {
        self.start
    }

    /// `endTime`, if any.
    pub fn end(&self) -> Option<Timestamp> {
        self.end
    }

    /// Whether a call may start at `now`, with the windows read in `zone`
    /// (a callee's own time zone) or else in the schedule's.
    pub fn state(&self, now: Timestamp, zone: Option<&TimeZone>) -> WindowState {
        if self.end.is_some_and(|end| now >= end) {
            return WindowState::Ended;
        }
        let early = self.start.filter(|start| now < *start);
        let at = early.unwrap_or(now);
        if self.windows.is_empty() {
            return match early {
                Some(start) => WindowState::NotYet { opens: start },
                None => WindowState::Open { closes: self.end },
            };
        }
        let zone = zone.unwrap_or(&self.zone);
        match self.opening(at, zone) {
            None => WindowState::Ended,
            Some((opens, _)) if early.is_some() => WindowState::NotYet { opens },
            Some((opens, closes)) if opens <= at => WindowState::Open { closes },
            Some((opens, _)) => WindowState::Closed { opens },
        }
    }

    /// The first opening that ends after `at` (clipped to startTime and
    /// endTime): when it opens, and when it closes if it opens by `at`
    /// (`None`: never).
    fn opening(&self, at: Timestamp, zone: &TimeZone) -> Option<(Timestamp, Option<Timestamp>)> {
        let first = at.to_zoned(zone.clone()).date().yesterday().ok()?;
        let mut current: Option<(Timestamp, Timestamp)> = None;
        let mut day_windows: Vec<(Timestamp, Timestamp)> = Vec::with_capacity(self.windows.len());
        let mut horizon_end = None;
        for offset in 0..HORIZON_DAYS {
            let Ok(day) = first.checked_add(offset.days()) else {
                break;
            };
            horizon_end = day.tomorrow().ok().and_then(|d| boundary(zone, d, 0));
            self.day_windows(zone, day, &mut day_windows);
            for &(opens, closes) in &day_windows {
                if closes <= at {
                    continue;
                }
                match &mut current {
                    None if opens > at => return Some((opens, None)),
                    None => current = Some((opens, closes)),
                    Some((_, end)) if opens <= *end => *end = (*end).max(closes),
                    Some((start, end)) => return Some((*start, Some(*end))),
                }
            }
        }
        let (opens, closes) = current?;
        // Open up to the end of the horizon: open every day from midnight to
        // midnight, so until endTime (clipped to it otherwise).
        if horizon_end.is_none_or(|horizon| closes >= horizon) {
            Some((opens, self.end))
        } else {
            Some((opens, Some(closes)))
        }
    }

    /// The windows of one local day as instants, clipped to startTime and
    /// endTime, non-empty, in order of opening.
    fn day_windows(&self, zone: &TimeZone, day: Date, out: &mut Vec<(Timestamp, Timestamp)>) {
        out.clear();
        let weekday = day.weekday();
        for window in self.windows.iter().filter(|w| w.applies(weekday)) {
            let opens = boundary(zone, day, window.from);
            let closes = if window.to >= DAY_MINUTES {
                day.tomorrow().ok().and_then(|d| boundary(zone, d, 0))
            } else {
                boundary(zone, day, window.to)
            };
            let (Some(mut opens), Some(mut closes)) = (opens, closes) else {
                continue;
            };
            if let Some(start) = self.start {
                opens = opens.max(start);
            }
            if let Some(end) = self.end {
                closes = closes.min(end);
            }
            if opens < closes {
                out.push((opens, closes));
            }
        }
        out.sort_unstable();
    }
}

/// The first instant the local clock in `zone` reads `minutes` after
/// midnight on `day` (see the module's documentation for changes of the
/// clocks). `None` only at the edges of the representable range.
fn boundary(zone: &TimeZone, day: Date, minutes: u16) -> Option<Timestamp> {
    let hour = i8::try_from(minutes / 60).ok()?;
    let minute = i8::try_from(minutes % 60).ok()?;
    let dt = DateTime::from_parts(day, Time::new(hour, minute, 0, 0).ok()?);
    match zone.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
        // The first of the two instants the clock reads dt.
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        // The clock skips dt: the instant it jumps over it. dt read with the
        // offset after the jump lies before the jump.
        AmbiguousOffset::Gap { before, after } => {
            let earlier = after.to_timestamp(dt).ok()?;
            zone.following(earlier)
                .next()
                .map(|transition| transition.timestamp())
                .or_else(|| before.to_timestamp(dt).ok())
        }
    }
}

/// Minutes after midnight of "HH:MM" (00:00-23:59, and 24:00 when
/// `allow_midnight`).
fn minutes(text: &str, allow_midnight: bool) -> Option<u16> {
    let &[h1, h2, b':', m1, m2] = text.as_bytes() else {
        return None;
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| u16::from(b - b'0'));
    let hour = digit(h1)? * 10 + digit(h2)?;
    let minute = digit(m1)? * 10 + digit(m2)?;
    match (hour, minute) {
        (0..=23, 0..=59) => Some(hour * 60 + minute),
        (24, 0) if allow_midnight => Some(DAY_MINUTES),
        _ => None,
    }
}

fn day_bit(day: Weekday) -> u8 {
    let offset = match day {
        Weekday::Mon => 0,
        Weekday::Tue => 1,
        Weekday::Wed => 2,
        Weekday::Thu => 3,
        Weekday::Fri => 4,
        Weekday::Sat => 5,
        Weekday::Sun => 6,
    };
    1 << offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Window;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as KubeTime;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn window(days: &[Weekday], from: &str, to: &str) -> Window {
        Window {
            days: days.to_vec(),
            from: from.into(),
            to: to.into(),
        }
    }

    fn schedule(zone: &str, windows: Vec<Window>) -> Schedule {
        Schedule {
            time_zone: zone.into(),
            windows,
            start_time: None,
            end_time: None,
        }
    }

    fn plan(zone: &str, windows: Vec<Window>) -> Plan {
        Plan::new(Some(&schedule(zone, windows))).unwrap()
    }

    fn open(closes: &str) -> WindowState {
        WindowState::Open {
            closes: Some(ts(closes)),
        }
    }

    fn closed(opens: &str) -> WindowState {
        WindowState::Closed { opens: ts(opens) }
    }

    use Weekday::*;
    const WEEKDAYS: &[Weekday] = &[Mon, Tue, Wed, Thu, Fri];

    #[test]
    fn system_time_zones_are_available() {
        let zone = zone("America/New_York").unwrap();
        let local = ts("2025-06-04T14:00:00Z").to_zoned(zone);
        assert_eq!(local.offset().seconds(), -4 * 3600);
    }

    #[test]
    fn no_schedule_is_always_open() {
        let plan = Plan::new(None).unwrap();
        let state = plan.state(ts("2025-06-04T14:00:00Z"), None);
        assert_eq!(state, WindowState::Open { closes: None });
        assert!(state.is_open());
    }

    #[test]
    fn inside_and_outside_a_window() {
        // 2025-06-04 is a Wednesday; New York is UTC-4 in June.
        let plan = plan("America/New_York", vec![window(&[], "09:00", "17:00")]);
        assert_eq!(
            plan.state(ts("2025-06-04T14:00:00Z"), None),
            open("2025-06-04T21:00:00Z")
        );
        // The first minute is in, the last is out.
        assert_eq!(
            plan.state(ts("2025-06-04T13:00:00Z"), None),
            open("2025-06-04T21:00:00Z")
        );
        assert_eq!(
            plan.state(ts("2025-06-04T21:00:00Z"), None),
            closed("2025-06-05T13:00:00Z")
        );
        // Early in the morning: opens the same day.
        assert_eq!(
            plan.state(ts("2025-06-04T10:00:00Z"), None),
            closed("2025-06-04T13:00:00Z")
        );
    }

    #[test]
    fn weekday_filtering_and_the_weekend() {
        let plan = plan("America/New_York", vec![window(WEEKDAYS, "09:00", "17:00")]);
        // Friday 18:00 local, Saturday and Sunday noon: Monday 09:00.
        for now in [
            "2025-06-06T22:00:00Z",
            "2025-06-07T16:00:00Z",
            "2025-06-08T16:00:00Z",
        ] {
            assert_eq!(
                plan.state(ts(now), None),
                closed("2025-06-09T13:00:00Z"),
                "{now}"
            );
        }
        // A Saturday-only window, asked on Sunday: next Saturday.
        let plan = plan_sat();
        assert_eq!(
            plan.state(ts("2025-06-08T12:00:00Z"), None),
            closed("2025-06-14T10:00:00Z")
        );
        assert_eq!(
            plan.state(ts("2025-06-14T11:00:00Z"), None),
            open("2025-06-14T12:00:00Z")
        );
    }

    fn plan_sat() -> Plan {
        plan("UTC", vec![window(&[Sat], "10:00", "12:00")])
    }

    #[test]
    fn windows_that_touch_across_midnight_are_one_opening() {
        let plan = plan(
            "UTC",
            vec![
                window(&[Sat], "00:00", "06:00"),
                window(&[Fri], "22:00", "24:00"),
            ],
        );
        // Friday 2025-06-06 23:00: open until Saturday 06:00.
        assert_eq!(
            plan.state(ts("2025-06-06T23:00:00Z"), None),
            open("2025-06-07T06:00:00Z")
        );
        // Friday noon: opens 22:00.
        assert_eq!(
            plan.state(ts("2025-06-06T12:00:00Z"), None),
            closed("2025-06-06T22:00:00Z")
        );
        // Saturday 06:00: next Friday 22:00.
        assert_eq!(
            plan.state(ts("2025-06-07T06:00:00Z"), None),
            closed("2025-06-13T22:00:00Z")
        );
    }

    #[test]
    fn overlapping_windows_merge() {
        let plan = plan(
            "UTC",
            vec![window(&[], "09:00", "12:00"), window(&[], "11:00", "14:00")],
        );
        assert_eq!(
            plan.state(ts("2025-06-04T09:30:00Z"), None),
            open("2025-06-04T14:00:00Z")
        );
    }

    #[test]
    fn windows_covering_every_day_never_close() {
        let plan = plan(
            "Europe/Berlin",
            vec![
                window(&[Mon, Tue, Wed, Thu], "00:00", "24:00"),
                window(&[Fri, Sat, Sun], "00:00", "24:00"),
            ],
        );
        // Across the spring-forward day in Berlin (2025-03-30).
        assert_eq!(
            plan.state(ts("2025-03-28T12:00:00Z"), None),
            WindowState::Open { closes: None }
        );
        let mut with_end = schedule("Europe/Berlin", vec![window(&[], "00:00", "24:00")]);
        with_end.end_time = Some(KubeTime(ts("2025-05-01T00:00:00Z")));
        let plan = Plan::new(Some(&with_end)).unwrap();
        assert_eq!(
            plan.state(ts("2025-03-28T12:00:00Z"), None),
            open("2025-05-01T00:00:00Z")
        );
    }

    #[test]
    fn a_callee_zone_overrides_the_schedule_zone() {
        let plan = plan("America/New_York", vec![window(&[], "09:00", "17:00")]);
        let tokyo = zone("Asia/Tokyo").unwrap();
        let now = ts("2025-06-04T14:00:00Z");
        // 10:00 in New York, 23:00 in Tokyo.
        assert_eq!(plan.state(now, None), open("2025-06-04T21:00:00Z"));
        assert_eq!(
            plan.state(now, Some(&tokyo)),
            closed("2025-06-05T00:00:00Z")
        );
        let new_york = zone("America/New_York").unwrap();
        assert_eq!(
            plan.state(now, Some(&new_york)),
            open("2025-06-04T21:00:00Z")
        );
    }

    #[test]
    fn start_and_end_time() {
        let mut s = schedule("UTC", vec![window(&[], "09:00", "17:00")]);
        s.start_time = Some(KubeTime(ts("2025-06-04T12:00:00Z")));
        s.end_time = Some(KubeTime(ts("2025-06-06T15:00:00Z")));
        let plan = Plan::new(Some(&s)).unwrap();
        // Before the start, inside the day's window: opens at the start.
        assert_eq!(
            plan.state(ts("2025-06-04T10:00:00Z"), None),
            WindowState::NotYet {
                opens: ts("2025-06-04T12:00:00Z")
            }
        );
        // Before the start, the start outside a window: the next window.
        assert_eq!(
            plan.state(ts("2025-06-03T10:00:00Z"), None),
            WindowState::NotYet {
                opens: ts("2025-06-04T12:00:00Z")
            }
        );
        assert_eq!(
            plan.state(ts("2025-06-04T12:00:00Z"), None),
            open("2025-06-04T17:00:00Z")
        );
        // The last day's window closes at the end.
        assert_eq!(
            plan.state(ts("2025-06-06T10:00:00Z"), None),
            open("2025-06-06T15:00:00Z")
        );
        assert_eq!(
            plan.state(ts("2025-06-06T15:00:00Z"), None),
            WindowState::Ended
        );
        // After the last window, before the end.
        let mut s2 = s.clone();
        s2.end_time = Some(KubeTime(ts("2025-06-06T20:00:00Z")));
        let plan = Plan::new(Some(&s2)).unwrap();
        assert_eq!(
            plan.state(ts("2025-06-06T18:00:00Z"), None),
            WindowState::Ended
        );

        // No windows: start and end alone.
        s.windows.clear();
        let plan = Plan::new(Some(&s)).unwrap();
        assert_eq!(
            plan.state(ts("2025-06-01T00:00:00Z"), None),
            WindowState::NotYet {
                opens: ts("2025-06-04T12:00:00Z")
            }
        );
        assert_eq!(
            plan.state(ts("2025-06-05T00:00:00Z"), None),
            open("2025-06-06T15:00:00Z")
        );
        assert_eq!(
            plan.state(ts("2025-06-07T00:00:00Z"), None),
            WindowState::Ended
        );
    }

    #[test]
    fn a_start_far_ahead_is_searched_from_the_start() {
        let mut s = schedule("UTC", vec![window(&[Mon], "09:00", "10:00")]);
        s.start_time = Some(KubeTime(ts("2025-09-01T00:00:00Z")));
        let plan = Plan::new(Some(&s)).unwrap();
        // 2025-09-01 is a Monday.
        assert_eq!(
            plan.state(ts("2025-06-04T00:00:00Z"), None),
            WindowState::NotYet {
                opens: ts("2025-09-01T09:00:00Z")
            }
        );
    }

    #[test]
    fn windows_that_never_open_before_the_end_are_ended() {
        let mut s = schedule("UTC", vec![window(&[Mon], "09:00", "10:00")]);
        // Tuesday 2025-06-03 to Saturday.
        s.end_time = Some(KubeTime(ts("2025-06-07T00:00:00Z")));
        let plan = Plan::new(Some(&s)).unwrap();
        assert_eq!(
            plan.state(ts("2025-06-03T12:00:00Z"), None),
            WindowState::Ended
        );
        s.start_time = Some(KubeTime(ts("2025-06-03T00:00:00Z")));
        let plan = Plan::new(Some(&s)).unwrap();
        assert_eq!(
            plan.state(ts("2025-06-02T12:00:00Z"), None),
            WindowState::Ended
        );
    }

    #[test]
    fn spring_forward() {
        // New York, 2025-03-09: 02:00 EST (07:00Z) becomes 03:00 EDT.
        let plan = plan("America/New_York", vec![window(&[], "01:30", "03:00")]);
        // 01:30 EST is 06:30Z; 03:00 EDT is 07:00Z.
        assert_eq!(
            plan.state(ts("2025-03-09T06:00:00Z"), None),
            closed("2025-03-09T06:30:00Z")
        );
        assert_eq!(
            plan.state(ts("2025-03-09T06:45:00Z"), None),
            open("2025-03-09T07:00:00Z")
        );
        // The next day 01:30 EDT is 05:30Z.
        assert_eq!(
            plan.state(ts("2025-03-09T07:00:00Z"), None),
            closed("2025-03-10T05:30:00Z")
        );

        // A window opening in the skipped hour opens at the change.
        let plan2 = plan_ny("02:30", "04:00");
        assert_eq!(
            plan2.state(ts("2025-03-09T06:50:00Z"), None),
            closed("2025-03-09T07:00:00Z")
        );
        assert_eq!(
            plan2.state(ts("2025-03-09T07:00:00Z"), None),
            open("2025-03-09T08:00:00Z")
        );

        // A window inside the skipped hour does not open that day.
        let plan3 = plan_ny("02:15", "02:45");
        assert_eq!(
            plan3.state(ts("2025-03-09T06:00:00Z"), None),
            closed("2025-03-10T06:15:00Z")
        );
    }

    fn plan_ny(from: &str, to: &str) -> Plan {
        plan("America/New_York", vec![window(&[], from, to)])
    }

    #[test]
    fn a_sunday_window_lost_to_spring_forward_opens_a_week_later() {
        let plan = plan("America/New_York", vec![window(&[Sun], "02:15", "02:45")]);
        // Monday 2025-03-03: the Sunday 2025-03-09 instance is skipped.
        assert_eq!(
            plan.state(ts("2025-03-03T12:00:00Z"), None),
            closed("2025-03-16T06:15:00Z")
        );
    }

    #[test]
    fn fall_back() {
        // New York, 2025-11-02: 02:00 EDT (06:00Z) becomes 01:00 EST.
        let plan = plan_ny("01:30", "03:00");
        // Opens at the first 01:30 (EDT, 05:30Z), closes 03:00 EST (08:00Z).
        assert_eq!(
            plan.state(ts("2025-11-02T05:00:00Z"), None),
            closed("2025-11-02T05:30:00Z")
        );
        // 01:15 EST, the repeated hour: still open.
        assert_eq!(
            plan.state(ts("2025-11-02T06:15:00Z"), None),
            open("2025-11-02T08:00:00Z")
        );
        // A window ending in the repeated hour ends at its first occurrence.
        let plan = plan_ny("00:00", "01:30");
        assert_eq!(
            plan.state(ts("2025-11-02T05:00:00Z"), None),
            open("2025-11-02T05:30:00Z")
        );
        assert_eq!(
            plan.state(ts("2025-11-02T06:15:00Z"), None),
            closed("2025-11-03T05:00:00Z")
        );
    }

    #[test]
    fn unknown_zones_are_errors_that_name_them() {
        let err = Plan::new(Some(&schedule("Mars/Base", vec![]))).unwrap_err();
        assert!(matches!(err, ScheduleError::UnknownZone { .. }));
        assert_eq!(
            err.to_string(),
            r#"schedule.timeZone: unknown time zone "Mars/Base""#
        );
        let err = zone("Mars/Base").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"timeZone: unknown time zone "Mars/Base""#
        );
    }

    #[test]
    fn bad_windows_are_errors() {
        for (from, to, message) in [
            (
                "9:00",
                "17:00",
                r#"schedule.windows[0].from: "9:00" is not a time of day "HH:MM""#,
            ),
            (
                "24:00",
                "24:00",
                r#"schedule.windows[0].from: "24:00" is not a time of day "HH:MM""#,
            ),
            (
                "09:60",
                "17:00",
                r#"schedule.windows[0].from: "09:60" is not a time of day "HH:MM""#,
            ),
            (
                "09:00",
                "24:01",
                r#"schedule.windows[0].to: "24:01" is not a time of day "HH:MM""#,
            ),
            (
                "09:00",
                "1700",
                r#"schedule.windows[0].to: "1700" is not a time of day "HH:MM""#,
            ),
            (
                "17:00",
                "09:00",
                r#"schedule.windows[0]: from "17:00" is not before to "09:00""#,
            ),
            (
                "09:00",
                "09:00",
                r#"schedule.windows[0]: from "09:00" is not before to "09:00""#,
            ),
        ] {
            let err = Plan::new(Some(&schedule("UTC", vec![window(&[], from, to)]))).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
        assert_eq!(minutes("23:59", false), Some(1439));
        assert_eq!(minutes("24:00", true), Some(1440));
        assert_eq!(minutes("+1:00", false), None);
    }

    #[test]
    fn start_must_be_before_end() {
        let mut s = schedule("UTC", vec![]);
        s.start_time = Some(KubeTime(ts("2025-06-04T12:00:00Z")));
        s.end_time = Some(KubeTime(ts("2025-06-04T12:00:00Z")));
        let err = Plan::new(Some(&s)).unwrap_err();
        assert!(matches!(err, ScheduleError::StartNotBeforeEnd { .. }));
    }
}
