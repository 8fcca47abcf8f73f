//! Placeholder until the reader lands.

use super::{ImportError, Imported, Params};

pub(super) fn import(file: &str, _text: &str, _params: &Params) -> Result<Imported, ImportError> {
    Err(ImportError {
        file: file.to_owned(),
        path: String::new(),
        message: "this format is not read yet".into(),
    })
}
