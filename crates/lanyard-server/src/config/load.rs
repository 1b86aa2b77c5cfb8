//! The server's one configuration loader: built-in defaults < the TOML file
//! < `LANYARD_*` environment variables < flags, merged here and nowhere
//! else.
//!
//! `lanyard serve` parses its flags into [`Overrides`] and calls [`load`];
//! `lanyard device add` calls [`data_dir`], so both find the same store.
//! The environment is read through a function, so tests give a fake one.
//!
//! | Setting | Flag | Environment | File |
//! |---|---|---|---|
//! | the file itself | `--config` | `LANYARD_CONFIG` | |
//! | listen address | `--listen` | `LANYARD_LISTEN` | `listen` |
//! | data directory | `--data-dir` | `LANYARD_DATA_DIR` | `data_dir` |
//! | TLS certificate and key | `--tls-cert`, `--tls-key` | `LANYARD_TLS_CERT`, `LANYARD_TLS_KEY` | `[tls]` |
//! | speech-to-text backend | `--stt-backend` | `LANYARD_STT_BACKEND` | `[stt] backend` |
//! | local model directory | `--model-dir` | `LANYARD_MODEL_DIR` | `[stt] model_dir` |
//! | local CPU threads | `--stt-threads` | `LANYARD_STT_THREADS` | `[stt] threads` |
//! | remote URL | `--stt-url` | `LANYARD_STT_URL` | `[stt] url` |
//! | remote key | `--stt-api-key` | `LANYARD_STT_API_KEY` | `[stt] api_key`, `api_key_env` |
//! | remote model | `--stt-model` | `LANYARD_STT_MODEL` | `[stt] model` |
//! | remote timeout | `--stt-timeout-secs` | `LANYARD_STT_TIMEOUT_SECS` | `[stt] timeout_secs` |
//! | admin token | | `LANYARD_ADMIN_TOKEN` (the token) | `admin_token_hash` |
//!
//! An empty environment variable counts as unset. `LANYARD_MODEL_DIR` and
//! `LANYARD_STT_THREADS` (and their flags) apply only to the local backend:
//! the model directory is commonly exported for every command, and must not
//! make a remote configuration fail.

use std::env::VarError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::{ConfigError, FileConfig, Secret, SttBackend, SttBackendKind, admin_token_hash};
use crate::ServerConfig;
use crate::tls::TlsSection;

/// Reads one environment variable: `std::env::var` in the server, a fake in
/// tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Result<String, VarError>;

/// The settings a flag (or its environment variable) can set. `None` leaves
/// a setting to the next layer down. `lanyard serve` fills this from its
/// flags alone; [`load`] reads the environment's layer into one of these too.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub model_dir: Option<PathBuf>,
    pub stt_threads: Option<usize>,
    pub stt_backend: Option<SttBackendKind>,
    pub stt_url: Option<String>,
    pub stt_api_key: Option<Secret>,
    pub stt_model: Option<String>,
    pub stt_timeout_secs: Option<u64>,
}

/// The server's default listen address: loopback, so a server started
/// without TLS exposes no token or audio to the network.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// The default data directory: `$XDG_DATA_HOME/lanyard/server`, else
/// `~/.local/share/lanyard/server`.
pub fn default_data_dir() -> PathBuf {
    lanyard_stt::data_home().join("server")
}

/// What `lanyard serve` runs with: the server's configuration and the
/// speech-to-text engine to build.
#[derive(Debug)]
pub struct Loaded {
    pub server: ServerConfig,
    pub stt: SttBackend,
}

impl Overrides {
    /// The environment's layer.
    fn from_env(env: Env) -> Result<Self, ConfigError> {
        Ok(Overrides {
            config: var(env, "LANYARD_CONFIG").map(PathBuf::from),
            listen: parsed(env, "LANYARD_LISTEN")?,
            data_dir: var(env, "LANYARD_DATA_DIR").map(PathBuf::from),
            tls_cert: var(env, "LANYARD_TLS_CERT").map(PathBuf::from),
            tls_key: var(env, "LANYARD_TLS_KEY").map(PathBuf::from),
            model_dir: var(env, lanyard_stt::MODEL_DIR_ENV).map(PathBuf::from),
            stt_threads: parsed(env, "LANYARD_STT_THREADS")?,
            stt_backend: parsed(env, "LANYARD_STT_BACKEND")?,
            stt_url: var(env, "LANYARD_STT_URL"),
            stt_api_key: var(env, "LANYARD_STT_API_KEY").map(Secret::new),
            stt_model: var(env, "LANYARD_STT_MODEL"),
            stt_timeout_secs: parsed(env, "LANYARD_STT_TIMEOUT_SECS")?,
        })
    }

    /// `self` over `lower`, key by key. The TLS pair moves as one: a
    /// certificate from one layer never meets a key from another.
    fn over(self, lower: Overrides) -> Overrides {
        let tls = if self.tls_cert.is_some() || self.tls_key.is_some() {
            (self.tls_cert, self.tls_key)
        } else {
            (lower.tls_cert, lower.tls_key)
        };
        Overrides {
            config: self.config.or(lower.config),
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            tls_cert: tls.0,
            tls_key: tls.1,
            model_dir: self.model_dir.or(lower.model_dir),
            stt_threads: self.stt_threads.or(lower.stt_threads),
            stt_backend: self.stt_backend.or(lower.stt_backend),
            stt_url: self.stt_url.or(lower.stt_url),
            stt_api_key: self.stt_api_key.or(lower.stt_api_key),
            stt_model: self.stt_model.or(lower.stt_model),
            stt_timeout_secs: self.stt_timeout_secs.or(lower.stt_timeout_secs),
        }
    }

    /// Writes these settings over the file's keys.
    fn apply(self, file: &mut FileConfig) -> Result<(), ConfigError> {
        file.listen = self.listen.or(file.listen);
        file.data_dir = self.data_dir.or(file.data_dir.take());
        match (self.tls_cert, self.tls_key) {
            (Some(cert_path), Some(key_path)) => file.tls = Some(TlsSection { cert_path, key_path }),
            (None, None) => {}
            _ => {
                return Err(ConfigError::Tls(
                    "--tls-cert and --tls-key (LANYARD_TLS_CERT, LANYARD_TLS_KEY) go together; give both".into(),
                ));
            }
        }
        let stt = &mut file.stt;
        stt.backend = self.stt_backend.or(stt.backend);
        if stt.backend != Some(SttBackendKind::Remote) {
            stt.model_dir = self.model_dir.or(stt.model_dir.take());
            stt.threads = self.stt_threads.or(stt.threads);
        }
        stt.url = self.stt_url.or(stt.url.take());
        stt.model = self.stt_model.or(stt.model.take());
        stt.timeout_secs = self.stt_timeout_secs.or(stt.timeout_secs);
        if let Some(key) = self.stt_api_key.filter(|k| !k.expose().is_empty()) {
            stt.api_key = Some(key);
            stt.api_key_env = None;
        }
        Ok(())
    }
}

/// The TOML file with the environment and the flags written over it.
fn layered(flags: Overrides, env: Env) -> Result<FileConfig, ConfigError> {
    let merged = flags.over(Overrides::from_env(env)?);
    let mut file = match &merged.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    merged.apply(&mut file)?;
    Ok(file)
}

/// `lanyard serve`'s configuration: every layer merged, every section
/// checked but the ones [`crate::validate`] checks by building them.
pub fn load(flags: Overrides, env: Env) -> Result<Loaded, ConfigError> {
    let file = layered(flags, env)?;
    let stt = file.stt.resolve(env, lanyard_stt::installed_model_dir)?;
    let mut server =
        ServerConfig::new(file.listen.unwrap_or(DEFAULT_LISTEN), file.data_dir.unwrap_or_else(default_data_dir));
    server.push = file.push;
    server.limits = file.limits;
    server.audio = file.audio;
    server.connections = file.connections;
    server.tls = file.tls;
    server.responder = file.responder.unwrap_or_default();
    let admin_token = var(env, "LANYARD_ADMIN_TOKEN").map(Secret::new);
    server.admin_token_hash =
        admin_token_hash(file.admin_token_hash.as_deref(), admin_token.as_ref().map(Secret::expose))?;
    Ok(Loaded { server, stt })
}

/// The data directory the server with these flags would use, by the same
/// layers: for commands that open the server's store (`lanyard device add`).
pub fn data_dir(flags: Overrides, env: Env) -> Result<PathBuf, ConfigError> {
    Ok(layered(flags, env)?.data_dir.unwrap_or_else(default_data_dir))
}

/// The process's environment, for [`load`] and [`data_dir`].
pub fn process_env(name: &str) -> Result<String, VarError> {
    std::env::var(name)
}

/// A variable's value; unset, empty and non-UTF-8 all read as unset, as
/// clap read them when it parsed these variables.
fn var(env: Env, name: &str) -> Option<String> {
    env(name).ok().filter(|v| !v.is_empty())
}

fn parsed<T: FromStr>(env: Env, name: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    var(env, name).map(|v| v.trim().parse().map_err(|e| ConfigError::Env(format!("{name}={v:?}: {e}")))).transpose()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> + use<> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| vars.get(k).cloned().ok_or(VarError::NotPresent)
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn local(loaded: &Loaded) -> (PathBuf, usize) {
        match &loaded.stt {
            SttBackend::Local { model_dir, threads } => (model_dir.clone(), *threads),
            other => panic!("not local: {other:?}"),
        }
    }

    /// Each key set in the file, again in the environment and again by a
    /// flag: the flag wins; without it the environment; without both the file.
    #[test]
    fn file_then_environment_then_flags() {
        let toml = file(
            "listen = \"127.0.0.1:1001\"\ndata_dir = \"/file/data\"\n[stt]\nmodel_dir = \"/file/model\"\nthreads = 1\n",
        );
        let path = toml.path().to_str().unwrap();
        let env_vars = [
            ("LANYARD_CONFIG", path),
            ("LANYARD_LISTEN", "127.0.0.1:1002"),
            ("LANYARD_DATA_DIR", "/env/data"),
            ("LANYARD_MODEL_DIR", "/env/model"),
            ("LANYARD_STT_THREADS", "2"),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:1003".parse().unwrap()),
            data_dir: Some("/flag/data".into()),
            model_dir: Some("/flag/model".into()),
            stt_threads: Some(3),
            ..Default::default()
        };

        let env = env_of(&[("LANYARD_CONFIG", path)]);
        let l = load(Overrides::default(), &env).unwrap();
        assert_eq!((l.server.listen.port(), l.server.data_dir.to_str()), (1001, Some("/file/data")));
        assert_eq!(local(&l), ("/file/model".into(), 1));
        // `lanyard device add` finds the store the file names, as `serve` does.
        assert_eq!(data_dir(Overrides::default(), &env).unwrap(), PathBuf::from("/file/data"));

        let env = env_of(&env_vars);
        let l = load(Overrides::default(), &env).unwrap();
        assert_eq!((l.server.listen.port(), l.server.data_dir.to_str()), (1002, Some("/env/data")));
        assert_eq!(local(&l), ("/env/model".into(), 2));
        assert_eq!(data_dir(Overrides::default(), &env).unwrap(), PathBuf::from("/env/data"));

        let l = load(flags.clone(), &env).unwrap();
        assert_eq!((l.server.listen.port(), l.server.data_dir.to_str()), (1003, Some("/flag/data")));
        assert_eq!(local(&l), ("/flag/model".into(), 3));
        assert_eq!(data_dir(flags, &env).unwrap(), PathBuf::from("/flag/data"));

        // --config over LANYARD_CONFIG.
        let other = file("listen = \"127.0.0.1:1004\"\n");
        let flags = Overrides { config: Some(other.path().into()), ..Default::default() };
        assert_eq!(load(flags, &env_of(&[("LANYARD_CONFIG", path)])).unwrap().server.listen.port(), 1004);
    }

    #[test]
    fn defaults_without_any_layer() {
        let l = load(Overrides::default(), &env_of(&[])).unwrap();
        assert_eq!(l.server.listen, DEFAULT_LISTEN);
        assert_eq!(l.server.data_dir, default_data_dir());
        assert_eq!(local(&l), (lanyard_stt::installed_model_dir(), 0));
        assert_eq!(l.server.admin_token_hash, None);
        assert!(l.server.tls.is_none());
    }

    #[test]
    fn stt_layers_and_the_key_secret() {
        let toml = file(
            "[stt]\nbackend = \"remote\"\nurl = \"http://file/v1\"\napi_key_env = \"FILE_KEY\"\nmodel = \"m-file\"\n",
        );
        let path = toml.path().to_str().unwrap();
        let remote = |l: Loaded| match l.stt {
            SttBackend::Remote(r) => r,
            other => panic!("not remote: {other:?}"),
        };
        // The file's key comes from the variable it names; a model directory
        // exported for every command does not break a remote configuration.
        let env = env_of(&[("LANYARD_CONFIG", path), ("FILE_KEY", "k-file"), ("LANYARD_MODEL_DIR", "/m")]);
        let r = remote(load(Overrides::default(), &env).unwrap());
        assert_eq!((r.url.as_str(), r.model.as_str()), ("http://file/v1", "m-file"));
        assert_eq!(r.api_key.as_ref().map(Secret::expose), Some("k-file"));
        // LANYARD_STT_API_KEY over the file's; LANYARD_STT_URL over the file's url.
        let env =
            env_of(&[("LANYARD_CONFIG", path), ("LANYARD_STT_API_KEY", "k-env"), ("LANYARD_STT_URL", "http://env/v1")]);
        let r = remote(load(Overrides::default(), &env).unwrap());
        assert_eq!((r.url.as_str(), r.api_key.as_ref().map(Secret::expose)), ("http://env/v1", Some("k-env")));
        // The flag over both.
        let flags = Overrides {
            stt_api_key: Some(Secret::new("k-flag")),
            stt_model: Some("m-flag".into()),
            ..Default::default()
        };
        let r = remote(load(flags, &env).unwrap());
        assert_eq!((r.model.as_str(), r.api_key.as_ref().map(Secret::expose)), ("m-flag", Some("k-flag")));
        assert!(!format!("{r:?}").contains("k-flag"));
        // The environment can switch the backend the file chose.
        let env = env_of(&[("LANYARD_CONFIG", path), ("FILE_KEY", "k"), ("LANYARD_STT_BACKEND", "local")]);
        let e = load(Overrides::default(), &env).unwrap_err().to_string();
        assert!(e.contains("url applies only to backend = \"remote\""), "{e}");
    }

    #[test]
    fn tls_and_admin_token() {
        let toml = file(
            "admin_token_hash = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[tls]\ncert_path = \"/file/cert\"\nkey_path = \"/file/key\"\n",
        );
        let path = toml.path().to_str().unwrap();
        let l = load(Overrides::default(), &env_of(&[("LANYARD_CONFIG", path)])).unwrap();
        assert_eq!(l.server.tls.as_ref().unwrap().cert_path, PathBuf::from("/file/cert"));
        assert_eq!(l.server.admin_token_hash, Some(crate::token::hash_token("test")));
        let token = "t".repeat(super::super::MIN_ADMIN_TOKEN_LEN);
        let env = env_of(&[
            ("LANYARD_CONFIG", path),
            ("LANYARD_TLS_CERT", "/env/cert"),
            ("LANYARD_TLS_KEY", "/env/key"),
            ("LANYARD_ADMIN_TOKEN", &token),
        ]);
        let l = load(Overrides::default(), &env).unwrap();
        assert_eq!(l.server.tls, Some(TlsSection { cert_path: "/env/cert".into(), key_path: "/env/key".into() }));
        assert_eq!(l.server.admin_token_hash, Some(crate::token::hash_token(&token)));
        let flags =
            Overrides { tls_cert: Some("/flag/cert".into()), tls_key: Some("/flag/key".into()), ..Default::default() };
        assert_eq!(load(flags, &env).unwrap().server.tls.unwrap().key_path, PathBuf::from("/flag/key"));
        // Half a pair is a mistake, and a pair is never mixed across layers.
        let half = Overrides { tls_cert: Some("/flag/cert".into()), ..Default::default() };
        assert!(load(half, &env).unwrap_err().to_string().contains("go together"));
    }

    #[test]
    fn a_bad_variable_is_named() {
        let e = load(Overrides::default(), &env_of(&[("LANYARD_LISTEN", "nowhere")])).unwrap_err().to_string();
        assert!(e.contains("LANYARD_LISTEN=\"nowhere\""), "{e}");
        let e = load(Overrides::default(), &env_of(&[("LANYARD_STT_BACKEND", "cloud")])).unwrap_err().to_string();
        assert!(e.contains("local or remote"), "{e}");
        // Empty counts as unset.
        assert_eq!(
            load(Overrides::default(), &env_of(&[("LANYARD_LISTEN", "")])).unwrap().server.listen,
            DEFAULT_LISTEN
        );
    }
}
