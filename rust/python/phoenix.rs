//! The Phoenix kernel's native subsystems as Python objects: `kernel.memory`, `kernel.conscience` and
//! `kernel.world`. Blocking work runs with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::{StoreError, StoreUnavailable};
use crate::subsystems::plastic_ltm::{self, Metadata};
use crate::subsystems::Phoenix;

/// Runs `work` on the store with the GIL released.
fn with_store<T: Send>(
    py: Python<'_>,
    phoenix: &Phoenix,
    work: impl FnOnce(&plastic_ltm::PlasticLtm) -> Result<T, plastic_ltm::LtmError> + Send,
) -> PyResult<T> {
    py.detach(|| match phoenix.memory() {
        Ok(store) => work(store).map_err(|e| StoreError::new_err(e.to_string())),
        Err(why) => Err(StoreUnavailable::new_err(format!("plastic_ltm unavailable: {why}"))),
    })
}

/// Persistent long-term memory (`kernel.memory`); `StoreUnavailable` while its store cannot be opened.
#[pyclass(frozen, module = "phoenix._core")]
pub struct PlasticLtm(pub Arc<Phoenix>);

#[pymethods]
impl PlasticLtm {
    /// Stores `data` with its `metadata` and returns the new record's id.
    #[pyo3(signature = (data, metadata = None))]
    fn store(&self, py: Python<'_>, data: &[u8], metadata: Option<Metadata>) -> PyResult<u64> {
        let metadata = metadata.unwrap_or_default();
        with_store(py, &self.0, |s| s.store(data, &metadata))
    }

    /// Returns `(data, metadata)`; raises `KeyError` for an unknown id.
    fn retrieve<'py>(&self, py: Python<'py>, id: u64) -> PyResult<(Bound<'py, PyBytes>, Metadata)> {
        match with_store(py, &self.0, |s| s.retrieve(id))? {
            Some((data, metadata)) => Ok((PyBytes::new(py, &data), metadata)),
            None => Err(PyKeyError::new_err(id)),
        }
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        with_store(py, &self.0, |s| s.len()).map(|len| usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// The integrity metric in [0, 1], measured now.
    fn integrity(&self, py: Python<'_>) -> PyResult<f64> {
        with_store(py, &self.0, |s| s.integrity().map(|i| i.metric))
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.0.data_dir().join(plastic_ltm::FILE_NAME)
    }
}

/// The kernel's axioms (`kernel.conscience`).
#[pyclass(frozen, module = "phoenix._core")]
pub struct TriuneConscience(pub Arc<Phoenix>);

#[pymethods]
impl TriuneConscience {
    fn alignment(&self, py: Python<'_>) -> f64 {
        py.detach(|| self.0.conscience().alignment())
    }

    /// The valid axioms as dicts with `id`, `statement` and `weight`.
    fn axioms<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let set = py.detach(|| self.0.conscience());
        set.axioms
            .iter()
            .map(|a| {
                let d = PyDict::new(py);
                d.set_item("id", &a.id)?;
                d.set_item("statement", &a.statement)?;
                d.set_item("weight", a.weight)?;
                Ok(d)
            })
            .collect()
    }

    /// Where the axioms came from: a file path, or `built-in`.
    #[getter]
    fn source(&self, py: Python<'_>) -> String {
        py.detach(|| self.0.conscience().source.clone())
    }

    /// What was wrong with the axioms file, one entry per problem.
    #[getter]
    fn problems(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.0.conscience().problems.clone())
    }
}

/// The kernel's state map (`kernel.world`): key to JSON value, with the time of each update.
#[pyclass(frozen, module = "phoenix._core")]
pub struct WorldModel(pub Arc<Phoenix>);

#[pymethods]
impl WorldModel {
    /// Records `value` (anything `json.dumps` accepts) under `key`, stamped with the current time.
    fn update(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let text: String = py.import("json")?.call_method1("dumps", (value,))?.extract()?;
        let value = serde_json::from_str(&text).map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.0.world().update(key, value);
        Ok(())
    }

    /// The value stored under `key`, or `None`.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.0.world().get(key) {
            Some((value, _)) => Ok(Some(py.import("json")?.call_method1("loads", (value.to_string(),))?)),
            None => Ok(None),
        }
    }

    /// Seconds since the Unix epoch of `key`'s last update, or `None`.
    fn updated_at(&self, key: &str) -> Option<f64> {
        let (_, at) = self.0.world().get(key)?;
        at.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
    }

    fn remove(&self, key: &str) -> bool {
        self.0.world().remove(key)
    }

    fn keys(&self) -> Vec<String> {
        self.0.world().keys()
    }

    fn __len__(&self) -> usize {
        self.0.world().len()
    }

    fn coherence(&self) -> f64 {
        self.0.world().coherence()
    }
}
