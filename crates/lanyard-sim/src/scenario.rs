//! The scenario file of `lanyard sim`: what to run and which faults to apply.
//!
//! A scenario is TOML with four tables; every key has a default, so a file
//! names only what it changes, and an unknown key is an error (a typo must
//! not silently turn a fault off). Rates of timed faults are *per minute of
//! campaign*, drawn as a Poisson process from the scenario's seed; rates of
//! per-item faults are probabilities in 0..=1.
//!
//! ```toml
//! [run]
//! seed = 7                  # every random choice derives from it
//! pendants = 4              # pendant + relay pairs, each relay its own device
//! utterances_per_pendant = 25
//! gap_ms = 1200             # silence between a pendant's utterances
//!
//! [corpus]                  # espeak-ng voices and rates, spread over pendants
//! voices = ["en-us", "en-gb"]
//! rates = [150, 175]
//! real_speech_per_pendant = 1  # of each pendant's utterances, recorded people
//! long_utterances_per_pendant = 1  # passages of several sentences (sim::long_speech)
//! long_secs = [35, 50]      # how long each passage runs
//!
//! [lifecycle]               # the simulated iOS app around each relay
//! wake_window_ms = [2000, 6000]
//!
//! [faults]
//! network_cuts_per_min = 2.0
//! relay_kill_on_suspend = 0.2
//! ```
//!
//! See `scenarios/` at the repository root for complete files.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A whole scenario, as read from its file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub run: RunSection,
    pub corpus: CorpusSection,
    pub lifecycle: LifecycleSection,
    pub faults: FaultSection,
}

/// `[run]`: the size and pace of the campaign.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// A label for the report.
    pub name: String,
    /// Seed of every random choice: fault times, victims, lifecycle.
    pub seed: u64,
    /// Simulated pendants; each has its own relay process and device.
    pub pendants: usize,
    /// Sentences each pendant speaks, taken round-robin from the corpus.
    pub utterances_per_pendant: usize,
    /// Silence between a pendant's utterances. Kept under the relay's
    /// silence timeout on purpose: utterance ends come from the END marker.
    pub gap_ms: u64,
    /// The negotiated ATT MTU of every pendant.
    pub mtu: u16,
    /// After the last pendant finishes, how long to wait for every utterance
    /// to be delivered before the undelivered ones count as lost.
    pub settle_secs: u64,
    /// Hard limit on the whole campaign.
    pub timeout_secs: u64,
    /// CPU threads the server gives Whisper (0: all cores).
    pub stt_threads: usize,
    /// Serve over TLS, with a throwaway CA the relays trust (`--ca-cert`),
    /// as a deployment runs. `false` serves plain HTTP on loopback.
    pub tls: bool,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            seed: 1,
            pendants: 2,
            utterances_per_pendant: 5,
            gap_ms: 1200,
            mtu: 185,
            settle_secs: 180,
            timeout_secs: 1800,
            stt_threads: 0,
            tls: true,
        }
    }
}

/// `[corpus]`: what the pendants say, and in which voices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusSection {
    /// espeak-ng voices, assigned to pendants in turn.
    pub voices: Vec<String>,
    /// Speaking rates in words per minute, assigned in turn after voices.
    pub rates: Vec<u32>,
    /// Reference sentences; empty means the built-in corpus.
    pub sentences: Vec<String>,
    /// How many of each pendant's utterances, its last ones, are recordings
    /// of real people (see `sim::real_speech`) instead of espeak-ng.
    pub real_speech_per_pendant: usize,
    /// How many of each pendant's utterances are long: a passage of several
    /// sentences joined by pauses, with some said twice on purpose (see
    /// `sim::long_speech`). They are spread over the campaign, the pendants
    /// taking turns, so that one long talker at a time is the usual case.
    pub long_utterances_per_pendant: usize,
    /// How long a long utterance runs, in seconds: each passage's length is
    /// drawn from [min, max], and it never runs past max. The server takes
    /// at most 10 minutes in one utterance, so max is 600 at most.
    pub long_secs: [u64; 2],
}

impl Default for CorpusSection {
    fn default() -> Self {
        Self {
            voices: vec!["en-us".into()],
            rates: vec![150],
            sentences: Vec::new(),
            real_speech_per_pendant: 0,
            long_utterances_per_pendant: 0,
            long_secs: [35, 50],
        }
    }
}

/// The longest a long utterance may be, in seconds: the server takes at most
/// 30,000 frames of 20 ms (10 minutes) in one utterance. A relay would split
/// a longer one, which the books would then count as split, not as one.
pub const MAX_LONG_SECS: u64 = 600;

/// The built-in corpus: everyday requests a pendant user would speak.
pub const CORPUS: &[&str] = &[
    "Remind me to call my sister tomorrow morning.",
    "What is the weather going to be like this weekend?",
    "Add milk, eggs and bread to my shopping list.",
    "Send a message to Tom saying I will be ten minutes late.",
    "Set a timer for twenty minutes.",
    "Turn off the lights in the kitchen.",
    "What time is my dentist appointment on Friday?",
    "Play some quiet music in the living room.",
    "How long does it take to drive to the airport?",
    "Book a table for two at seven tonight.",
    "Remind me to water the plants when I get home.",
    "Call the office and tell them I am running late.",
];

impl CorpusSection {
    pub fn sentences(&self) -> Vec<String> {
        if self.sentences.is_empty() { CORPUS.iter().map(|s| s.to_string()).collect() } else { self.sentences.clone() }
    }
}

/// `[lifecycle]`: how each relay's simulated iOS app moves between states.
///
/// Foreground for a while; then background, where every BLE event (an
/// utterance starting or ending) grants a wake window; when a window runs
/// out the app is told it will suspend and is then frozen with SIGSTOP.
/// The next BLE event thaws it (SIGCONT) into a new wake window, or, with
/// `foreground_on_wake`, the user opens the app. A killed app is relaunched
/// on the pendant's next BLE event, in the background.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSection {
    /// Off: every relay stays in the foreground.
    pub enabled: bool,
    /// How long a foreground spell lasts, ms, drawn uniformly from [min, max].
    pub foreground_ms: [u64; 2],
    /// A background wake window, ms, drawn uniformly from [min, max].
    pub wake_window_ms: [u64; 2],
    /// Between `suspend` and the freeze: the app's last moment to hand off.
    pub suspend_grace_ms: u64,
    /// Probability that a wake brings the app to the foreground.
    pub foreground_on_wake: f64,
}

impl Default for LifecycleSection {
    fn default() -> Self {
        Self {
            enabled: true,
            foreground_ms: [5_000, 20_000],
            wake_window_ms: [2_000, 8_000],
            suspend_grace_ms: 300,
            foreground_on_wake: 0.2,
        }
    }
}

/// `[faults]`: each fault kind with its own rate. Zero turns a kind off.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSection {
    /// Per relay: one live connection through its fault proxy is reset.
    pub network_cuts_per_min: f64,
    /// Per relay: a latency spike of `delay_ms` on every chunk for `delay_for_ms`.
    pub delays_per_min: f64,
    pub delay_ms: u64,
    pub delay_for_ms: u64,
    /// Per relay: connections are accepted but nothing is forwarded for
    /// `black_hole_for_ms`; the connections caught in it are then reset.
    pub black_holes_per_min: f64,
    pub black_hole_for_ms: u64,
    /// Per relay: a Wi-Fi to cellular switch: every connection is reset and
    /// new ones are refused for `switch_outage_ms`.
    pub network_switches_per_min: f64,
    pub switch_outage_ms: u64,
    /// The server is SIGKILLed and restarted on the same data and port.
    pub server_kills_per_min: f64,
    /// Per relay: SIGKILL at a random moment (a crash, or jetsam).
    pub relay_kills_per_min: f64,
    /// Probability that a suspending app is killed instead of frozen.
    pub relay_kill_on_suspend: f64,
    /// Per notification: lost between pendant and relay.
    pub ble_drop_rate: f64,
    /// Per frame: delivered after the next frame.
    pub ble_reorder_rate: f64,
    /// Probability that a relay launch gets a slow disk.
    pub slow_disk_rate: f64,
    /// How much longer each spool fsync takes on a slow disk. The relay
    /// fsyncs every 200 ms inside its event loop, so a delay near 200 ms
    /// leaves it no time for anything else: it falls behind real time and
    /// what is queued is lost if the app is then killed (a finding of the
    /// first campaigns; tens of ms is a slow flash chip).
    pub slow_disk_fsync_ms: u64,
    /// Per push request: the APNs peer answers 500, 503 or 429.
    pub apns_failure_rate: f64,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the scenario {}", path.display()))?;
        let s: Scenario = toml::from_str(&text)
            .with_context(|| format!("scenario {} is not valid; `lanyard sim --help` lists every key, and scenarios/ci-short.toml sets them all", path.display()))?;
        s.validate().with_context(|| format!("scenario {}", path.display()))?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        let r = &self.run;
        if r.pendants == 0 || r.pendants > 32 {
            bail!("[run] pendants must be 1 to 32 (each is two processes)");
        }
        if r.utterances_per_pendant == 0 {
            bail!("[run] utterances_per_pendant must be at least 1");
        }
        if self.corpus.voices.is_empty() || self.corpus.rates.is_empty() {
            bail!("[corpus] voices and rates must each name at least one");
        }
        let c = &self.corpus;
        if c.real_speech_per_pendant + c.long_utterances_per_pendant > r.utterances_per_pendant {
            bail!(
                "[corpus] real_speech_per_pendant and long_utterances_per_pendant together cannot exceed [run] \
                 utterances_per_pendant"
            );
        }
        let [lo, hi] = c.long_secs;
        if lo == 0 || lo > hi || hi > MAX_LONG_SECS {
            bail!(
                "[corpus] long_secs is [min, max] in seconds with 1 <= min <= max <= {MAX_LONG_SECS} (the server's \
                 limit of one utterance), not [{lo}, {hi}]"
            );
        }
        let f = &self.faults;
        for (name, p) in [
            ("relay_kill_on_suspend", f.relay_kill_on_suspend),
            ("ble_drop_rate", f.ble_drop_rate),
            ("ble_reorder_rate", f.ble_reorder_rate),
            ("slow_disk_rate", f.slow_disk_rate),
            ("apns_failure_rate", f.apns_failure_rate),
            ("foreground_on_wake", self.lifecycle.foreground_on_wake),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} is a probability: give a value from 0 to 1, not {p}");
            }
        }
        for (name, r) in [
            ("network_cuts_per_min", f.network_cuts_per_min),
            ("delays_per_min", f.delays_per_min),
            ("black_holes_per_min", f.black_holes_per_min),
            ("network_switches_per_min", f.network_switches_per_min),
            ("server_kills_per_min", f.server_kills_per_min),
            ("relay_kills_per_min", f.relay_kills_per_min),
        ] {
            if !(0.0..=60.0).contains(&r) {
                bail!("[faults] {name} is events per minute: give a value from 0 to 60, not {r}");
            }
        }
        let l = &self.lifecycle;
        if l.foreground_ms[0] > l.foreground_ms[1] || l.wake_window_ms[0] > l.wake_window_ms[1] {
            bail!("[lifecycle] ranges are [min, max] with min <= max");
        }
        Ok(())
    }

    /// Total utterances the pendants will speak.
    pub fn utterances(&self) -> usize {
        self.run.pendants * self.run.utterances_per_pendant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most speech one pendant of `s` can say, in seconds, if each of
    /// its short utterances lasts `short_secs`.
    fn longest_speech_secs(s: &Scenario, short_secs: u64) -> u64 {
        let (r, c) = (&s.run, &s.corpus);
        let long = c.long_utterances_per_pendant as u64;
        let short = r.utterances_per_pendant as u64 - long;
        let gaps = r.utterances_per_pendant as u64 * r.gap_ms / 1000;
        long * c.long_secs[1] + short * short_secs + gaps
    }

    #[test]
    fn committed_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
        for name in ["ci-short", "clean", "long-1000", "smoke"] {
            let s = Scenario::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert!(
                s.corpus.real_speech_per_pendant + s.corpus.long_utterances_per_pendant <= s.run.utterances_per_pendant,
                "{name}"
            );
            // Every pendant says all it has to say (short utterances of up
            // to 8 s) with a third of the campaign's time left to deliver.
            assert!(
                longest_speech_secs(&s, 8) * 3 <= s.run.timeout_secs * 2,
                "{name}: timeout_secs {} leaves too little room after {} s of speech",
                s.run.timeout_secs,
                longest_speech_secs(&s, 8)
            );
        }
    }

    #[test]
    fn real_speech_cannot_exceed_a_pendants_utterances() {
        let s: Scenario =
            toml::from_str("[run]\nutterances_per_pendant = 2\n[corpus]\nreal_speech_per_pendant = 3\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("real_speech_per_pendant"));
    }

    #[test]
    fn long_utterances_fit_beside_real_speech_and_under_the_server_limit() {
        let s: Scenario = toml::from_str(
            "[run]\nutterances_per_pendant = 3\n[corpus]\nreal_speech_per_pendant = 2\nlong_utterances_per_pendant = 2\n",
        )
        .unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("long_utterances_per_pendant"));
        for secs in ["[0, 40]", "[50, 40]", "[30, 601]"] {
            let s: Scenario =
                toml::from_str(&format!("[corpus]\nlong_utterances_per_pendant = 1\nlong_secs = {secs}\n")).unwrap();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("long_secs"), "{secs}: {err}");
        }
        let s: Scenario =
            toml::from_str("[corpus]\nlong_utterances_per_pendant = 1\nlong_secs = [300, 600]\n").unwrap();
        s.validate().unwrap();
    }
}
