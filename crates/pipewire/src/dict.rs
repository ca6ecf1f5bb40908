//! Rust strings handed to PipeWire as a `spa_dict` (what its `update_properties` calls take).
use crate::spa_sys as spa;
use std::ffi::CString;

/// Calls `f` with a `spa_dict` of `pairs`, valid during the call only (PipeWire copies what it
/// keeps). Pairs with an interior NUL, which C could not see whole, are left out.
pub(crate) fn with_dict<K, V, R>(
    pairs: impl IntoIterator<Item = (K, V)>,
    f: impl FnOnce(*const spa::spa_dict) -> R,
) -> R
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let owned: Vec<(CString, CString)> = pairs
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                CString::new(k.as_ref()).ok()?,
                CString::new(v.as_ref()).ok()?,
            ))
        })
        .collect();
    let items: Vec<spa::spa_dict_item> = owned
        .iter()
        .map(|(k, v)| spa::spa_dict_item {
            key: k.as_ptr(),
            value: v.as_ptr(),
        })
        .collect();
    let dict = spa::spa_dict {
        flags: 0,
        n_items: items.len() as u32,
        items: items.as_ptr(),
    };
    f(&dict)
}
