//! Reading JSON request bodies into domain values.
//!
//! Bodies are read as objects of raw JSON values, so numbers keep the exact text the client
//! sent (prices never pass through a float), every field is named in its error, and fields
//! nobody asked for are reported as unknown.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::ApiError;
use crate::domain::FieldError;

/// A JSON value as sent, classified by its first character.
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    Null,
    String(&'a RawValue),
    Number(&'a str),
    Other(&'a str),
}

/// An object of the body, or an object nested in it, with the fields not yet read.
pub struct JsonObject<'a> {
    path: String,
    fields: BTreeMap<String, &'a RawValue>,
}

impl<'a> JsonObject<'a> {
    /// Parses the whole body; anything but a JSON object is a malformed request.
    pub fn parse_body(body: &'a [u8]) -> Result<Self, ApiError> {
        let fields = serde_json::from_slice(body)
            .map_err(|e| ApiError::Malformed(format!("the body must be a JSON object: {e}")))?;
        Ok(Self {
            path: String::new(),
            fields,
        })
    }

    fn field_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Takes a field out; `None` when absent. JSON `null` is returned as [`Json::Null`].
    pub fn take(&mut self, name: &str) -> Option<Json<'a>> {
        self.fields.remove(name).map(classify)
    }

    /// Takes a string field; absent and `null` are `None`; another type is malformed.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None | Some(Json::Null) => Ok(None),
            Some(json) => self.as_string(name, json).map(Some),
        }
    }

    pub fn as_string(&self, name: &str, json: Json<'a>) -> Result<String, ApiError> {
        match json {
            Json::String(raw) => serde_json::from_str(raw.get()).map_err(|_| {
                ApiError::Malformed(format!("`{}` is not a valid string", self.field_path(name)))
            }),
            _ => Err(self.wrong_type(name, "a string")),
        }
    }

    /// Takes a number field as its literal text; absent and `null` are `None`.
    pub fn number(&mut self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.take(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(literal)) => Ok(Some(literal)),
            Some(_) => Err(self.wrong_type(name, "a number")),
        }
    }

    /// Takes a decimal given as a JSON number or a string, as its text.
    pub fn decimal(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(literal)) => Ok(Some(literal.to_owned())),
            Some(json @ Json::String(_)) => self.as_string(name, json).map(Some),
            Some(_) => Err(self.wrong_type(name, "a number or a decimal string")),
        }
    }

    /// Takes an array of objects.
    pub fn objects(&mut self, name: &str) -> Result<Option<Vec<JsonObject<'a>>>, ApiError> {
        let raw = match self.fields.remove(name) {
            None => return Ok(None),
            Some(raw) if raw.get() == "null" => return Ok(None),
            Some(raw) => raw,
        };
        let elements: Vec<&'a RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| self.wrong_type(name, "an array"))?;
        let base = self.field_path(name);
        elements
            .into_iter()
            .enumerate()
            .map(|(i, element)| {
                let path = format!("{base}[{i}]");
                let fields = serde_json::from_str(element.get())
                    .map_err(|_| ApiError::Malformed(format!("`{path}` must be an object")))?;
                Ok(JsonObject { path, fields })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The error for a field that is present but of the wrong JSON type.
    pub fn wrong_type(&self, name: &str, expected: &str) -> ApiError {
        ApiError::Malformed(format!("`{}` must be {expected}", self.field_path(name)))
    }

    /// A rule broken by a field, named by its full path.
    pub fn invalid(&self, name: &str, message: impl Into<String>) -> FieldError {
        FieldError::new(self.field_path(name), message)
    }

    /// Ends reading: every field left over was not asked for.
    pub fn finish(self, errors: &mut Vec<FieldError>) {
        for name in self.fields.keys() {
            errors.push(self.invalid(name, "unknown field"));
        }
    }
}

fn classify(raw: &RawValue) -> Json<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => Json::Null,
        Some(b'"') => Json::String(raw),
        Some(b'-' | b'0'..=b'9') => Json::Number(text),
        _ => Json::Other(text),
    }
}
