//! Sealing an utterance into a file for a background upload.
//!
//! iOS background sessions upload files over HTTP, so an utterance the
//! planner hands off is written out whole: Opus utterances as Ogg Opus
//! (packet *i* = frame *i*), PCM16 ones as a 16 kHz mono WAV (samples
//! `320 i .. 320 (i + 1)` = frame *i*). Either way the server can merge the
//! file with frames it already has from the stream, and the file is fsynced
//! before the task is handed to the app.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use lanyard_proto::ble::Codec;
use lanyard_proto::wire::limits::MAX_UTTERANCE_FRAMES;
use lanyard_proto::{oggopus, wav};
use uuid::Uuid;

use crate::spool::{Spool, SpoolError};

/// A sealed utterance, ready for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub path: PathBuf,
    pub content_type: &'static str,
}

/// Where sealed files live: beside the segments, in the spool directory.
pub fn uploads_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("uploads")
}

/// Writes utterance `id` from the spool into an upload file.
pub fn seal(spool: &Spool, id: Uuid) -> Result<Sealed, SpoolError> {
    let u = spool.utterance(id).ok_or(SpoolError::UnknownUtterance(id))?;
    // The server takes at most this many (see `Uplink`'s cap for the rest).
    let count = u.frame_count().min(MAX_UTTERANCE_FRAMES);
    let frames: Vec<Vec<u8>> = (0..count).map(|i| spool.read_frame(id, i)).collect::<Result<_, _>>()?;
    let (bytes, ext, content_type) = match u.codec {
        Codec::Opus16k20ms => {
            // The Ogg serial only has to be unique within the file.
            let serial = id.as_u128() as u32;
            (oggopus::write(serial, frames.iter().map(Vec::as_slice)), "ogg", "audio/ogg")
        }
        Codec::Pcm16k => (wav::write(frames.iter().map(Vec::as_slice)), "wav", "audio/wav"),
    };
    let dir = uploads_dir(spool.dir());
    let io = |source| SpoolError::Io { path: dir.clone(), source };
    fs::create_dir_all(&dir).map_err(io)?;
    let path = dir.join(format!("{id}.{ext}"));
    let tmp = dir.join(format!("{id}.{ext}.tmp"));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    // Rename so the app never sees a half-written file, then sync the directory.
    fs::rename(&tmp, &path).map_err(io)?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(Sealed { path, content_type })
}

/// The utterance ids with a sealed file, found after a restart.
pub fn sealed_ids(spool_dir: &Path) -> Vec<(Uuid, PathBuf)> {
    let Ok(entries) = fs::read_dir(uploads_dir(spool_dir)) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?;
            let ext = path.extension()?.to_str()?;
            (ext == "ogg" || ext == "wav").then(|| Uuid::parse_str(stem).ok().map(|id| (id, path.clone())))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool in `dir` holding one ended Opus utterance of `frames`.
    fn ended_opus<'a>(dir: &Path, frames: impl IntoIterator<Item = &'a [u8]>) -> (Spool, Uuid) {
        let (mut spool, _) = Spool::open(dir).unwrap();
        let id = Uuid::now_v7();
        spool.begin(id, Codec::Opus16k20ms, 0).unwrap();
        for f in frames {
            spool.append_frame(id, f).unwrap();
        }
        spool.end(id, 0).unwrap();
        (spool, id)
    }

    #[test]
    fn opus_utterances_seal_to_ogg_that_reads_back_frame_for_frame() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<u8>> = (0..60u8).map(|i| vec![i; 70]).collect();
        let (spool, id) = ended_opus(dir.path(), frames.iter().map(Vec::as_slice));
        let sealed = seal(&spool, id).unwrap();
        assert_eq!(sealed.content_type, "audio/ogg");
        assert_eq!(oggopus::read(&fs::read(&sealed.path).unwrap()).unwrap(), frames);
        assert_eq!(sealed_ids(dir.path()), vec![(id, sealed.path.clone())]);
        // The new directory does not confuse the spool's recovery.
        drop(spool);
        let (spool, r) = Spool::open(dir.path()).unwrap();
        assert!(r.truncated.is_empty());
        assert_eq!(spool.utterance(id).unwrap().frame_count(), 60);
    }

    #[test]
    fn pcm_utterances_seal_to_wav() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path()).unwrap();
        let id = Uuid::now_v7();
        spool.begin(id, Codec::Pcm16k, 0).unwrap();
        spool.append_frame(id, &[1u8; 640]).unwrap();
        let sealed = seal(&spool, id).unwrap();
        let bytes = fs::read(&sealed.path).unwrap();
        assert_eq!(sealed.content_type, "audio/wav");
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(bytes.len(), 44 + 640);
    }

    #[test]
    fn a_seal_stops_at_the_servers_frame_limit() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<[u8; 4]> = (0..MAX_UTTERANCE_FRAMES + 3).map(u32::to_le_bytes).collect();
        let (spool, id) = ended_opus(dir.path(), frames.iter().map(|f| &f[..]));
        let packets = oggopus::read(&fs::read(seal(&spool, id).unwrap().path).unwrap()).unwrap();
        assert_eq!(packets.len(), MAX_UTTERANCE_FRAMES as usize);
        assert_eq!(packets.last().unwrap(), &(MAX_UTTERANCE_FRAMES - 1).to_le_bytes());
    }
}
