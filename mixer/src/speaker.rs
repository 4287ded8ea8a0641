//! Speaker selection: which K participants are mixed this tick.
//!
//! Mixing only the K loudest keeps a room's cost proportional to K rather than to its
//! size, and keeps the noise floor of many open microphones out of the mix. Hysteresis
//! (a hold on each talker's score and a margin a newcomer must beat) stops the set from
//! flapping at every syllable gap.

use std::time::{Duration, Instant};

/// Level meaning "no signal" (RFC 6464 silence is −127 dBov).
pub const SILENCE_DBOV: f32 = -127.0;

/// Tuning of the selection, with the defaults a conference wants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// How many talkers are mixed at once (K).
    pub max_talkers: usize,
    /// A frame louder than this (dBov) counts as voice activity.
    pub activity_threshold_dbov: f32,
    /// How long a talker stays eligible after its last active frame: longer than the
    /// pauses between words, so a talker is not cut mid-sentence.
    pub hangover: Duration,
    /// How long a talker's score holds its peak before it starts to fall.
    pub hold: Duration,
    /// How many dB louder than the quietest selected talker a newcomer must be to
    /// replace it.
    pub switch_margin_db: f32,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            max_talkers: 3,
            activity_threshold_dbov: -50.0,
            hangover: Duration::from_millis(500),
            hold: Duration::from_millis(400),
            switch_margin_db: 3.0,
        }
    }
}

/// One participant's selection state.
#[derive(Debug, Clone, Copy)]
pub struct TalkerState {
    score: f32,
    last_peak: Option<Instant>,
    last_active: Option<Instant>,
    selected: bool,
}

impl Default for TalkerState {
    fn default() -> Self {
        TalkerState {
            score: SILENCE_DBOV,
            last_peak: None,
            last_active: None,
            selected: false,
        }
    }
}

impl TalkerState {
    /// Whether this participant is in the mixed set.
    pub fn is_selected(&self) -> bool {
        self.selected
    }
    /// The smoothed, held level the selection compares (dBov).
    pub fn score(&self) -> f32 {
        self.score
    }

    fn update(&mut self, level: f32, now: Instant, cfg: &SpeakerConfig) {
        if level > cfg.activity_threshold_dbov {
            self.last_active = Some(now);
        }
        if level >= self.score - 3.0 {
            // Fast attack; the hold restarts whenever the level is back near its peak.
            self.score += 0.5 * (level - self.score).max(0.0);
            self.last_peak = Some(now);
        } else if self
            .last_peak
            .is_none_or(|t| now.saturating_duration_since(t) > cfg.hold)
        {
            self.score += 0.2 * (level - self.score);
        }
    }

    fn eligible(&self, now: Instant, cfg: &SpeakerConfig) -> bool {
        self.last_active
            .is_some_and(|t| now.saturating_duration_since(t) <= cfg.hangover)
    }
}

/// A change of the talker set, reported by index into the caller's participant list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TalkerChange {
    /// The participant at this index joined the mix.
    Started(usize),
    /// The participant at this index left the mix.
    Stopped(usize),
}

/// Picks the talkers of one room, tick by tick. Sans-IO: levels and time come in.
#[derive(Debug, Clone)]
pub struct SpeakerSelector {
    config: SpeakerConfig,
    states: Vec<TalkerState>,
}

impl SpeakerSelector {
    /// A selector with no participants.
    pub fn new(config: SpeakerConfig) -> Self {
        SpeakerSelector {
            config,
            states: Vec::new(),
        }
    }
    /// The configuration in force.
    pub fn config(&self) -> &SpeakerConfig {
        &self.config
    }
    /// Adds a participant at the end of the list (index `len()`).
    pub fn push(&mut self) {
        self.states.push(TalkerState::default());
    }
    /// Removes the participant at `index` the way `Vec::swap_remove` does, so the
    /// caller's list and this one stay parallel.
    pub fn swap_remove(&mut self, index: usize) {
        if index < self.states.len() {
            self.states.swap_remove(index);
        }
    }
    /// Number of participants.
    pub fn len(&self) -> usize {
        self.states.len()
    }
    /// Whether there are no participants.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
    /// The state of the participant at `index`.
    pub fn state(&self, index: usize) -> Option<&TalkerState> {
        self.states.get(index)
    }
    /// Whether the participant at `index` is mixed.
    pub fn is_selected(&self, index: usize) -> bool {
        self.states.get(index).is_some_and(|s| s.selected)
    }
    /// Forgets a participant's history (it was muted or put on hold), deselecting it.
    pub fn clear(&mut self, index: usize) -> Option<TalkerChange> {
        let s = self.states.get_mut(index)?;
        let was = s.selected;
        *s = TalkerState::default();
        was.then_some(TalkerChange::Stopped(index))
    }

    /// One tick: `level(i)` gives participant i's level this frame in dBov, or `None`
    /// if it may not talk (muted, on hold). Changes are reported through `changed`.
    pub fn tick(
        &mut self,
        now: Instant,
        mut level: impl FnMut(usize) -> Option<f32>,
        mut changed: impl FnMut(TalkerChange),
    ) {
        let cfg = self.config;
        let mut selected = 0;
        for (i, s) in self.states.iter_mut().enumerate() {
            match level(i) {
                Some(l) => s.update(l, now, &cfg),
                None => {
                    *s = TalkerState {
                        selected: s.selected,
                        ..TalkerState::default()
                    }
                }
            }
            if s.selected && !s.eligible(now, &cfg) {
                s.selected = false;
                changed(TalkerChange::Stopped(i));
            }
            selected += usize::from(s.selected);
        }
        // Fill free places with the loudest eligible newcomers, then let a newcomer that
        // beats the quietest talker by the margin take its place. Each pass is O(N) and
        // at most K passes run, with no allocation.
        for _ in 0..cfg.max_talkers.max(1) {
            let Some(best) = self.loudest_unselected(now) else {
                break;
            };
            if selected < cfg.max_talkers {
                self.states[best].selected = true;
                selected += 1;
                changed(TalkerChange::Started(best));
                continue;
            }
            let Some(weakest) = self.quietest_selected() else {
                break;
            };
            if self.states[best].score > self.states[weakest].score + cfg.switch_margin_db {
                self.states[weakest].selected = false;
                changed(TalkerChange::Stopped(weakest));
                self.states[best].selected = true;
                changed(TalkerChange::Started(best));
            } else {
                break;
            }
        }
    }

    fn loudest_unselected(&self, now: Instant) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, s) in self.states.iter().enumerate() {
            if s.selected || !s.eligible(now, &self.config) {
                continue;
            }
            if best.is_none_or(|b| s.score > self.states[b].score) {
                best = Some(i);
            }
        }
        best
    }

    fn quietest_selected(&self) -> Option<usize> {
        let mut worst: Option<usize> = None;
        for (i, s) in self.states.iter().enumerate() {
            if s.selected && worst.is_none_or(|w| s.score < self.states[w].score) {
                worst = Some(i);
            }
        }
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(20);

    fn run(
        sel: &mut SpeakerSelector,
        start: Instant,
        ticks: u32,
        levels: impl Fn(u32, usize) -> Option<f32>,
    ) -> (Instant, Vec<TalkerChange>) {
        let mut changes = Vec::new();
        let mut now = start;
        for t in 0..ticks {
            sel.tick(now, |i| levels(t, i), |c| changes.push(c));
            now += TICK;
        }
        (now, changes)
    }

    fn selected(sel: &SpeakerSelector) -> Vec<usize> {
        (0..sel.len()).filter(|&i| sel.is_selected(i)).collect()
    }

    #[test]
    fn picks_the_loudest_k() {
        let mut sel = SpeakerSelector::new(SpeakerConfig::default());
        for _ in 0..6 {
            sel.push();
        }
        let lv = [-20.0, -60.0, -25.0, -127.0, -30.0, -127.0];
        run(&mut sel, Instant::now(), 10, |_, i| Some(lv[i]));
        assert_eq!(selected(&sel), vec![0, 2, 4]);
    }

    #[test]
    fn a_louder_fourth_talker_replaces_the_quietest() {
        let mut sel = SpeakerSelector::new(SpeakerConfig::default());
        for _ in 0..5 {
            sel.push();
        }
        let t0 = Instant::now();
        let (now, _) = run(&mut sel, t0, 50, |_, i| {
            Some([-20.0, -25.0, -30.0, -127.0, -127.0][i])
        });
        assert_eq!(selected(&sel), vec![0, 1, 2]);
        let (_, changes) = run(&mut sel, now, 50, |_, i| {
            Some([-20.0, -25.0, -30.0, -15.0, -127.0][i])
        });
        assert_eq!(selected(&sel), vec![0, 1, 3]);
        assert!(changes.contains(&TalkerChange::Stopped(2)));
        assert!(changes.contains(&TalkerChange::Started(3)));
    }

    #[test]
    fn a_slightly_louder_newcomer_does_not_cause_flapping() {
        let mut sel = SpeakerSelector::new(SpeakerConfig::default());
        for _ in 0..4 {
            sel.push();
        }
        let t0 = Instant::now();
        let (now, _) = run(&mut sel, t0, 50, |_, i| {
            Some([-20.0, -25.0, -30.0, -127.0][i])
        });
        let (_, changes) = run(&mut sel, now, 100, |_, i| {
            Some([-20.0, -25.0, -30.0, -29.0][i])
        });
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn hysteresis_keeps_a_talker_through_a_200_ms_pause() {
        let mut sel = SpeakerSelector::new(SpeakerConfig::default());
        for _ in 0..4 {
            sel.push();
        }
        let t0 = Instant::now();
        // Three talkers and a quieter fourth that is also active.
        let (now, _) = run(&mut sel, t0, 50, |_, i| {
            Some([-20.0, -22.0, -24.0, -35.0][i])
        });
        assert_eq!(selected(&sel), vec![0, 1, 2]);
        // Talker 1 pauses for 200 ms (10 ticks) while the fourth keeps talking.
        let (now, changes) = run(&mut sel, now, 10, |_, i| {
            Some([-20.0, -127.0, -24.0, -35.0][i])
        });
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(selected(&sel), vec![0, 1, 2]);
        // A long silence does end its turn.
        let (_, changes) = run(&mut sel, now, 50, |_, i| {
            Some([-20.0, -127.0, -24.0, -35.0][i])
        });
        assert!(changes.contains(&TalkerChange::Stopped(1)));
        assert_eq!(selected(&sel), vec![0, 2, 3]);
    }

    #[test]
    fn silent_and_muted_participants_are_never_selected() {
        let mut sel = SpeakerSelector::new(SpeakerConfig::default());
        for _ in 0..3 {
            sel.push();
        }
        run(&mut sel, Instant::now(), 20, |_, i| match i {
            0 => None,
            1 => Some(-127.0),
            _ => Some(-70.0),
        });
        assert!(selected(&sel).is_empty());
    }

    #[test]
    fn swap_remove_keeps_states_parallel() {
        let mut sel = SpeakerSelector::new(SpeakerConfig::default());
        for _ in 0..3 {
            sel.push();
        }
        run(&mut sel, Instant::now(), 5, |_, i| {
            Some([-127.0, -127.0, -10.0][i])
        });
        sel.swap_remove(0);
        assert_eq!(selected(&sel), vec![0]);
    }
}
