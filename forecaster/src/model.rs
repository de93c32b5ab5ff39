//! ONNX Runtime: locating and loading `libonnxruntime`, and running a model.
//!
//! `ort` is built with `load-dynamic`: the shared library comes from the
//! `onnxruntime==1.31.1` wheel the project's set-up installs into `.venv`
//! (`forecaster/train/setup_venv.sh`, run by `scripts/setup`). ONNX Runtime
//! allows one environment per process, so it is created once and shared.
//! Sessions are only ever driven from the inference thread
//! ([`crate::engine`]), never from the async workers.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use parking_lot::Mutex;

use crate::contract::{Contract, ContractError};
use crate::features::Batch;

/// Why a model is not available.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "libonnxruntime not found (looked at: {looked}); run scripts/setup (it installs the \
         onnxruntime==1.31.1 wheel into .venv) or set model.onnxruntime_lib / ORT_DYLIB_PATH"
    )]
    LibraryNotFound { looked: String },
    #[error("loading ONNX Runtime from {path}: {message}")]
    Library { path: PathBuf, message: String },
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("model {name}: {message}")]
    Session { name: String, message: String },
    #[error("model {name}: output {output} has {got} values, expected {want}")]
    Shape {
        name: String,
        output: &'static str,
        got: usize,
        want: usize,
    },
}

static ENV: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

/// Candidate locations of `libonnxruntime.so.1.31.1`, best first: the
/// configured path alone when there is one (a path the operator named
/// that is missing is an error to fix, not a reason to load another
/// library), else `ORT_DYLIB_PATH`, then the project venv (`$SHARDCAST_VENV`,
/// `.venv` next to the current directory, the executable or this crate's
/// workspace, walking up).
pub fn library_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    let mut venvs = Vec::new();
    if let Some(v) = std::env::var_os("SHARDCAST_VENV") {
        venvs.push(PathBuf::from(v));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::current_dir() {
        roots.push(d);
    }
    if let Ok(e) = std::env::current_exe() {
        roots.push(e);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for r in roots {
        for a in r.ancestors() {
            venvs.push(a.join(".venv"));
        }
    }
    for v in venvs {
        let lib = v.join("lib");
        let Ok(rd) = std::fs::read_dir(&lib) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("python") {
                out.push(
                    e.path()
                        .join("site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"),
                );
            }
        }
    }
    out
}

/// The process-wide ONNX Runtime environment, created on first success.
/// Returns it and the library path it was loaded from.
pub fn runtime(configured: Option<&Path>) -> Result<(Environment, PathBuf), ModelError> {
    let mut g = ENV.lock();
    if let Some((env, path)) = g.as_ref() {
        return Ok((env.clone(), path.clone()));
    }
    let cands = library_candidates(configured);
    let Some(path) = cands.iter().find(|p| p.is_file()).cloned() else {
        let looked = cands
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ModelError::LibraryNotFound { looked });
    };
    let lib_err = |message: String| ModelError::Library {
        path: path.clone(),
        message,
    };
    let env = ort::init_from(&path)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("shardcast-forecaster")
        .build()
        .map_err(|e| lib_err(e.to_string()))?;
    *g = Some((env.clone(), path.clone()));
    Ok((env, path))
}

/// Outputs of one run, row-major: `quantiles` [rows × horizon × Q],
/// `agg_quantiles` [rows × aggregates × Q], in demand units.
pub struct Outputs {
    pub quantiles: Vec<f32>,
    pub agg_quantiles: Vec<f32>,
}

/// A loaded model: its contract and an ONNX Runtime session.
pub struct OnnxModel {
    pub contract: Contract,
    session: Session,
}

impl OnnxModel {
    /// Load the contract at `contract_path` and its graph.
    pub fn load(
        contract_path: &Path,
        lib: Option<&Path>,
        intra_threads: usize,
    ) -> Result<OnnxModel, ModelError> {
        let contract = Contract::load(contract_path)?;
        let (env, _) = runtime(lib)?;
        let name = contract.name.clone();
        let serr = |message: String| ModelError::Session {
            name: name.clone(),
            message,
        };
        let session = Session::builder(&env)
            .map_err(|e| serr(e.to_string()))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| serr(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| serr(e.to_string()))?
            .commit_from_file(&contract.onnx)
            .map_err(|e| serr(format!("{}: {e}", contract.onnx.display())))?;
        Ok(OnnxModel { contract, session })
    }

    /// One `session.run` over the whole batch.
    pub fn run(&mut self, batch: Batch) -> Result<Outputs, ModelError> {
        let c = &self.contract;
        let name = c.name.clone();
        let serr = |message: String| ModelError::Session {
            name: name.clone(),
            message,
        };
        let b = batch.rows;
        let past = Tensor::from_array(([b, c.context, c.past_features], batch.past))
            .map_err(|e| serr(e.to_string()))?;
        let future = Tensor::from_array(([b, c.horizon, c.future_features], batch.future))
            .map_err(|e| serr(e.to_string()))?;
        let scale =
            Tensor::from_array(([b, 1usize], batch.scale)).map_err(|e| serr(e.to_string()))?;
        let nq = c.quantiles.len();
        let want = [(b * c.horizon * nq), (b * c.aggregates.len() * nq)];
        let outs = self
            .session
            .run(ort::inputs!["past" => past, "future" => future, "scale" => scale])
            .map_err(|e| serr(e.to_string()))?;
        let mut got = Vec::with_capacity(2);
        for (i, key) in ["quantiles", "agg_quantiles"].into_iter().enumerate() {
            let v = outs
                .get(key)
                .ok_or_else(|| serr(format!("no output {key}")))?;
            let (_, data) = v
                .try_extract_tensor::<f32>()
                .map_err(|e| serr(format!("{key}: {e}")))?;
            if data.len() != want[i] {
                return Err(ModelError::Shape {
                    name: name.clone(),
                    output: key,
                    got: data.len(),
                    want: want[i],
                });
            }
            got.push(data.to_vec());
        }
        let agg_quantiles = got.pop().unwrap_or_default();
        let quantiles = got.pop().unwrap_or_default();
        Ok(Outputs {
            quantiles,
            agg_quantiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_library_is_the_only_candidate() {
        let p = Path::new("/nonexistent/libonnxruntime.so.1.31.1");
        assert_eq!(library_candidates(Some(p)), vec![p.to_path_buf()]);
    }
}
