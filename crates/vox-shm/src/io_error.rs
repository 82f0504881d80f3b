//! One conversion for every typed error of this crate: `?` in a function
//! returning `io::Result` turns it into an `io::Error` whose kind is the
//! error's `kind()` and whose source is the typed error (downcast it back
//! with `get_ref().downcast_ref()`).

/// `?` from these errors into `io::Error`: the kind from `kind()`, the typed
/// error kept as the source.
macro_rules! into_io_error {
    ($($t:ty),*) => {$(
        impl From<$t> for io::Error {
            fn from(e: $t) -> Self {
                io::Error::new(e.kind(), e)
            }
        }
    )*};
}
pub(crate) use into_io_error;
