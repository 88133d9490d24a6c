//! Building a composite result row for a raw V1 function whose SQL return type is a
//! named composite (`key_validation`, `provider_key`): the tuple descriptor comes from
//! the typcache by the call's return type, so no type is looked up by name per call.

use pgrx::pg_sys;

/// A result row of `N` columns, all NULL until set.
pub struct ResultRow<const N: usize> {
    values: [pg_sys::Datum; N],
    nulls: [bool; N],
}

impl<const N: usize> Default for ResultRow<N> {
    fn default() -> Self {
        ResultRow {
            values: [pg_sys::Datum::from(0usize); N],
            nulls: [true; N],
        }
    }
}

impl<const N: usize> ResultRow<N> {
    /// Set column `i` (0-based); `None` leaves it NULL.
    pub fn set(&mut self, i: usize, d: Option<pg_sys::Datum>) {
        if let Some(d) = d {
            self.values[i] = d;
            self.nulls[i] = false;
        }
    }

    /// Column `i`, if set.
    pub fn get(&self, i: usize) -> Option<pg_sys::Datum> {
        (!self.nulls[i]).then(|| self.values[i])
    }

    /// Form the composite datum for the current call's return type.
    ///
    /// # Safety
    /// `fcinfo` must be the current call's, and the values must be valid datums of the
    /// return type's column types.
    pub unsafe fn into_datum(mut self, fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
        unsafe {
            let mut rettype = pg_sys::get_fn_expr_rettype((*fcinfo).flinfo);
            if rettype == pg_sys::InvalidOid {
                rettype = pg_sys::get_func_rettype((*(*fcinfo).flinfo).fn_oid);
            }
            let tupdesc = pg_sys::lookup_rowtype_tupdesc(rettype, -1);
            if (*tupdesc).natts as usize != N {
                pg_sys::DecrTupleDescRefCount(tupdesc);
                pgrx::error!("api_key_mgmt: the result type has an unexpected shape; the extension's SQL and library versions differ");
            }
            let tuple =
                pg_sys::heap_form_tuple(tupdesc, self.values.as_mut_ptr(), self.nulls.as_mut_ptr());
            pg_sys::DecrTupleDescRefCount(tupdesc);
            pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
        }
    }
}
