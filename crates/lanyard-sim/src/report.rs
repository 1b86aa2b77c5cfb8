//! The campaign's report: a one-line-per-fact text summary for the terminal,
//! and one self-contained HTML page (`--report`).
//!
//! The page needs nothing but a browser: styles are inline, and every plot
//! is an inline SVG drawn with `plotters`' SVG backend (text is left to the
//! browser, so no font library is involved). It holds the verdict, the
//! accounting table, the faults applied, latency percentiles with a
//! histogram and a CDF per metric, a timeline of one utterance across
//! pendant, relay, server and push, the word error rate, WER and TTFS by
//! utterance length, the machine and the scenario.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::Outcome;
use super::ledger::{Accounting, LengthRow, Mark, Metric};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn ms(v: Option<i64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v} ms"))
}

fn verdict(o: &Outcome) -> (bool, String) {
    let t = &o.accounting.totals;
    let pass = t.lost == 0 && t.duplicated == 0 && t.duplicate_frames == 0 && t.acked_audio_lost == 0;
    let text = format!(
        "{}: {} relay utterances: {} replied, {} silent (unmarked, nothing heard, not answered), {} discarded by policy, {} lost; {} duplicated (answered or stored twice); {} audio frames received twice; {} times the server held less than it had acknowledged",
        if pass { "PASS" } else { "FAIL" },
        t.relay_utterances,
        t.replied,
        t.silent,
        t.discarded,
        t.lost,
        t.duplicated,
        t.duplicate_frames,
        t.acked_audio_lost
    );
    (pass, text)
}

fn percent(v: Option<f32>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1}%", v * 100.0))
}

/// One bucket of the by-length table, as a line of the terminal summary.
fn length_line(b: &LengthRow) -> String {
    format!(
        "{}: {} spoken, {} replied; WER {} over {} ({} words); TTFS p50 {} p95 {} (n={})",
        b.label,
        b.spoken,
        b.replied,
        percent(b.wer),
        b.measured,
        b.reference_words,
        ms(b.ttfs_p50),
        ms(b.ttfs_p95),
        b.ttfs_n
    )
}

/// The terminal summary.
pub fn summary(o: &Outcome) -> String {
    let a = &o.accounting;
    let t = &a.totals;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nlanyard sim: scenario {:?} (seed {}), {:.0} s wall",
        o.scenario.run.name, o.scenario.run.seed, o.wall_secs
    );
    let _ = writeln!(s, "  {}", verdict(o).1);
    let _ = writeln!(
        s,
        "  spoken {} utterances: {} heard as one relay utterance, {} split, {} never reached a spool; {} handed off for background upload",
        t.spoken, t.heard_as_one, t.spoken_split, t.spoken_unheard, t.handed_off
    );
    let _ = writeln!(
        s,
        "  frames: {} spoken, {} spooled by relays, {} stored by the server, {} received; {} push resends after a server crash (same collapse id)",
        t.frames_spoken, t.frames_spooled, t.frames_stored, t.frames_received, t.push_resends_after_crash
    );
    let faults: Vec<String> = a.fault_counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(s, "  faults applied: {}", faults.join(", "));
    let _ = writeln!(s, "  server incarnations {}, relay launches {:?}", o.server_incarnations, o.relay_launches);
    for m in &a.latency {
        match &m.note {
            Some(note) if m.values_ms.is_empty() => {
                let _ = writeln!(s, "  {}: {note}", m.name);
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  {}: p50 {} p95 {} p99 {} (n={})",
                    m.name,
                    ms(m.p50),
                    ms(m.p95),
                    ms(m.p99),
                    m.values_ms.len()
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "  word error rate {:.1}% over {} utterances ({} reference words)",
        a.wer.rate * 100.0,
        a.wer.utterances,
        a.wer.reference_words
    );
    let _ = writeln!(
        s,
        "  by utterance length (WER and TTFS over those heard whole: one relay utterance, replied, every frame):"
    );
    for b in &a.by_length {
        let _ = writeln!(s, "    {}", length_line(b));
    }
    for r in a.utterances.iter().filter(|r| r.outcome == "lost" || r.duplicate.is_some()) {
        let _ = writeln!(
            s,
            "  {} {} (phone {}): {} {}",
            r.outcome.to_uppercase(),
            r.id,
            r.phone,
            r.reason,
            r.duplicate.as_deref().unwrap_or("")
        );
    }
    s
}

/// A histogram of one metric, as an SVG string.
fn histogram(m: &Metric) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 260)).into_drawing_area();
        root.fill(&WHITE)?;
        let lo = *m.values_ms.first().unwrap_or(&0);
        let hi = (*m.values_ms.last().unwrap_or(&1)).max(lo + 1);
        let bins = 20i64;
        let width = ((hi - lo) as f64 / bins as f64).max(1.0);
        let mut counts = vec![0u32; bins as usize];
        for &v in &m.values_ms {
            let b = (((v - lo) as f64 / width) as usize).min(bins as usize - 1);
            counts[b] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} — histogram", m.key), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d(lo as f64..(lo as f64 + width * bins as f64), 0u32..top + 1)?;
        chart.configure_mesh().x_desc("ms after end of speech").y_desc("utterances").draw()?;
        chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = lo as f64 + width * i as f64;
            Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
        }))?;
        root.present()?;
    }
    Ok(svg)
}

/// The empirical CDF of one metric, as an SVG string.
fn cdf(m: &Metric) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 260)).into_drawing_area();
        root.fill(&WHITE)?;
        let lo = *m.values_ms.first().unwrap_or(&0) as f64;
        let hi = (*m.values_ms.last().unwrap_or(&1) as f64).max(lo + 1.0);
        let n = m.values_ms.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} — CDF", m.key), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d(lo..hi, 0.0..1.0)?;
        chart.configure_mesh().x_desc("ms after end of speech").y_desc("fraction").draw()?;
        let mut points = Vec::new();
        for (i, &v) in m.values_ms.iter().enumerate() {
            points.push((v as f64, i as f64 / n));
            points.push((v as f64, (i + 1) as f64 / n));
        }
        chart.draw_series(LineSeries::new(points, RED.stroke_width(2)))?;
        root.present()?;
    }
    Ok(svg)
}

/// The timeline of one utterance: one lane per role, a mark per event.
fn timeline_svg(marks: &[Mark]) -> String {
    let lanes = ["pendant", "relay", "server", "push", "faults"];
    let (Some(first), Some(last)) = (marks.first(), marks.last()) else {
        return String::new();
    };
    let t0 = first.at_ms;
    let span = (last.at_ms - t0).max(1) as f64;
    let (left, width) = (90.0, 900.0);
    let row = 26.0;
    let height = 60.0 + row * marks.len() as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 330.0
    );
    for (i, lane) in lanes.iter().enumerate() {
        let x = left + width * i as f64 / lanes.len() as f64;
        let _ = write!(s, r#"<text x="{x}" y="16" font-weight="bold">{lane}</text>"#);
    }
    let _ = write!(s, r##"<line x1="{left}" y1="30" x2="{}" y2="30" stroke="#888"/>"##, left + width);
    for (k, m) in marks.iter().enumerate() {
        let x = left + width * (m.at_ms - t0) as f64 / span;
        let y = 50.0 + row * k as f64;
        let lane = lanes.iter().position(|l| *l == m.lane).unwrap_or(0);
        let color = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728"][lane];
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="30" x2="{x}" y2="{y}" stroke="{color}" stroke-dasharray="2,3"/><circle cx="{x}" cy="{y}" r="5" fill="{color}"/><text x="6" y="{ty}">+{dt} ms</text><text x="{lx}" y="{ty}" fill="{color}">{lane_name}: {label}</text>"##,
            ty = y + 4.0,
            dt = m.at_ms - t0,
            lx = x + 9.0,
            lane_name = esc(&m.lane),
            label = esc(&m.label)
        );
    }
    s.push_str("</svg>");
    s
}

/// The whole page.
pub fn html(o: &Outcome) -> Result<String> {
    let a = &o.accounting;
    let t = &a.totals;
    let (pass, verdict) = verdict(o);
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>lanyard sim — {name}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}th{{background:#f3f3f3}}
.pass{{color:#060;font-weight:bold}}.fail{{color:#b00;font-weight:bold}}.plots{{display:flex;flex-wrap:wrap;gap:8px}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>lanyard sim — {name}</h1><p id="verdict" class="{cls}">{verdict}</p>
<p>Seed {seed}, {wall:.0} s wall time, {spoken} utterances spoken by {pendants} pendants, started at Unix ms {start}.</p>"#,
        name = esc(&o.scenario.run.name),
        cls = if pass { "pass" } else { "fail" },
        verdict = esc(&verdict),
        seed = o.scenario.run.seed,
        wall = o.wall_secs,
        spoken = t.spoken,
        pendants = o.scenario.run.pendants,
        start = o.started_ms,
    );

    accounting_section(&mut h, a);
    faults_section(&mut h, o);
    latency_section(&mut h, a)?;
    wer_sections(&mut h, a);
    spoken_sections(&mut h, a);
    let m = &o.machine;
    let _ = write!(
        h,
        "<h2>Machine</h2><table id=\"machine\"><tr><td>CPU</td><td>{}</td></tr><tr><td>cores</td><td>{}</td></tr><tr><td>memory</td><td>{} GiB</td></tr><tr><td>OS</td><td>{}</td></tr><tr><td>kernel</td><td>{}</td></tr></table>",
        esc(&m.cpu),
        m.cores,
        m.memory_gib,
        esc(&m.os),
        esc(&m.kernel)
    );
    let toml = toml::to_string_pretty(&o.scenario).unwrap_or_default();
    let _ = writeln!(
        h,
        "<h2>Scenario</h2><p>{}</p><pre id=\"scenario\">{}</pre></body></html>",
        esc(&o.scenario_path),
        esc(&toml)
    );
    Ok(h)
}

/// The accounting table, and every relay utterance (folded).
fn accounting_section(h: &mut String, a: &Accounting) {
    let t = &a.totals;
    h.push_str(r#"<h2>Accounting</h2><table id="accounting"><tr><th>outcome</th><th>relay utterances</th></tr>"#);
    for (k, v) in [
        ("replied (transcribed, replied, push accepted)", t.replied),
        ("silent (unmarked, nothing heard: stored, not answered)", t.silent),
        ("discarded by policy", t.discarded),
        ("lost", t.lost),
    ] {
        let _ = write!(h, "<tr><td>{k}</td><td>{v}</td></tr>");
    }
    let _ = write!(
        h,
        "<tr><th>total</th><th>{}</th></tr><tr><td>duplicated: answered twice or audio stored twice</td><td>{}</td></tr>\
<tr><td>audio frames received twice (server metric)</td><td>{}</td></tr>\
<tr><td>acknowledged audio the server no longer held on resume</td><td>{}</td></tr>\
<tr><td>push resends after a server crash (same collapse id, shown once)</td><td>{}</td></tr>\
<tr><td>handed off to the background upload</td><td>{}</td></tr>\
<tr><td>frames spoken / spooled / stored / received</td><td>{} / {} / {} / {}</td></tr>\
<tr><td>spoken utterances heard as exactly one relay utterance</td><td>{} of {}</td></tr>\
<tr><td>spoken utterances split by the relay / never reaching a spool</td><td>{} / {}</td></tr></table>",
        t.relay_utterances,
        t.duplicated,
        t.duplicate_frames,
        t.acked_audio_lost,
        t.push_resends_after_crash,
        t.handed_off,
        t.frames_spoken,
        t.frames_spooled,
        t.frames_stored,
        t.frames_received,
        t.heard_as_one,
        t.spoken,
        t.spoken_split,
        t.spoken_unheard
    );
    h.push_str("<details><summary>Every relay utterance</summary><table id=\"utterances\"><tr><th>id</th><th>phone</th><th>spoken</th><th>outcome</th><th>reason / duplicate</th><th>frames spooled</th><th>store</th><th>audio file</th><th>transcript writes</th><th>push attempts / accepted</th><th>handed off</th><th>transcript</th></tr>");
    for r in &a.utterances {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>",
            r.id,
            r.phone,
            r.spoken.map_or("-".into(), |(p, k)| format!("{p}#{k}")),
            r.outcome,
            esc(&r.reason),
            esc(r.duplicate.as_deref().unwrap_or("")),
            r.spooled_frames.map_or("-".into(), |v| v.to_string()),
            r.stored_frames.map_or("-".into(), |v| v.to_string()),
            r.audio_records.map_or("-".into(), |v| v.to_string()),
            r.transcript_writes,
            r.push_attempts,
            r.pushes_accepted,
            if r.handed_off { "yes" } else { "" },
            esc(r.transcript.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></details>");
}

/// The faults applied: counts, then every one in order (folded).
fn faults_section(h: &mut String, o: &Outcome) {
    h.push_str("<h2>Faults applied</h2><table id=\"faults\"><tr><th>kind</th><th>times applied</th></tr>");
    for (k, n) in &o.accounting.fault_counts {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
    }
    let _ = write!(
        h,
        "</table><p>Server incarnations: {}. Relay launches per phone: {:?}.</p>",
        o.server_incarnations, o.relay_launches
    );
    h.push_str("<details><summary>Every fault, in order</summary><table><tr><th>Unix ms</th><th>kind</th><th>target</th><th>detail</th></tr>");
    for f in &o.faults {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.at_ms,
            esc(&f.kind),
            esc(&f.target),
            esc(&f.detail)
        );
    }
    h.push_str("</table></details>");
}

/// Latency percentiles, with a histogram and a CDF per metric.
fn latency_section(h: &mut String, a: &Accounting) -> Result<()> {
    h.push_str("<h2>Latency</h2><p>Over spoken utterances heard as one relay utterance and replied; from the pendant's end of speech.</p><table id=\"latency\"><tr><th>metric</th><th>n</th><th>p50</th><th>p95</th><th>p99</th></tr>");
    for m in &a.latency {
        match &m.note {
            Some(note) if m.values_ms.is_empty() => {
                let _ = write!(h, "<tr><td>{}</td><td colspan=\"4\">{}</td></tr>", esc(&m.name), esc(note));
            }
            _ => {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&m.name),
                    m.values_ms.len(),
                    ms(m.p50),
                    ms(m.p95),
                    ms(m.p99)
                );
            }
        }
    }
    h.push_str("</table><div class=\"plots\">");
    for m in a.latency.iter().filter(|m| !m.values_ms.is_empty()) {
        h.push_str(&histogram(m).with_context(|| format!("cannot draw the {} histogram", m.key))?);
        h.push_str(&cdf(m).with_context(|| format!("cannot draw the {} CDF", m.key))?);
    }
    h.push_str("</div>");
    Ok(())
}

/// WER over the run, and WER and TTFS by utterance length.
fn wer_sections(h: &mut String, a: &Accounting) {
    let _ = write!(
        h,
        "<h2>Word error rate</h2><p id=\"wer\">{:.1}% over {} utterances ({} reference words), against the sentences the pendants spoke.</p>",
        a.wer.rate * 100.0,
        a.wer.utterances,
        a.wer.reference_words
    );

    h.push_str(
        "<h2>By utterance length</h2><p>Length is how long the pendant spoke. WER and TTFS (end of speech → final \
transcript) are over the utterances heard whole: as one relay utterance, replied, with every frame the pendant \
spoke but those dropped on purpose.</p><table id=\"by-length\"><tr><th>length</th><th>spoken</th><th>replied</th>\
<th>heard whole</th><th>reference words</th><th>WER</th><th>TTFS n</th><th>TTFS p50</th><th>TTFS p95</th></tr>",
    );
    for b in &a.by_length {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.label),
            b.spoken,
            b.replied,
            b.measured,
            b.reference_words,
            percent(b.wer),
            b.ttfs_n,
            ms(b.ttfs_p50),
            ms(b.ttfs_p95)
        );
    }
    h.push_str("</table>");
}

/// The timeline of the median utterance, and every spoken utterance (folded).
fn spoken_sections(h: &mut String, a: &Accounting) {
    h.push_str("<h2>Timeline of one utterance</h2>");
    match a.timeline_id {
        Some(id) => {
            let _ = write!(
                h,
                "<p>Utterance {id} (the median TTFS), across pendant, relay (and the app around it), server and push.</p><div id=\"timeline\">{}</div>",
                timeline_svg(&a.timeline)
            );
        }
        None => h.push_str("<p>No utterance was replied, so there is no timeline.</p>"),
    }

    h.push_str("<details><summary>Every spoken utterance</summary><table id=\"spoken\"><tr><th>pendant#index</th><th>reference</th><th>transcript</th><th>WER</th><th>length</th><th>frames spoken / spooled</th><th>BLE drops / reorders</th><th>relay utterances</th><th>latency (ms)</th></tr>");
    for s in &a.spoken {
        let lat: Vec<String> = s.latency_ms.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = write!(
            h,
            "<tr><td>{}#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{} / {}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>",
            s.pendant,
            s.index,
            esc(&s.reference),
            esc(s.transcript.as_deref().unwrap_or("")),
            s.wer.map_or("-".into(), |w| format!("{:.0}%", w * 100.0)),
            s.length_ms as f64 / 1000.0,
            s.frames_spoken,
            s.frames_spooled,
            s.injected_drops,
            s.reordered_frames,
            s.relay_utterances.len(),
            lat.join(", ")
        );
    }
    h.push_str("</table></details>");
}
