//! `#[settings]`: a stage kind's settings struct declares and documents itself.
//!
//! On a struct with named fields it derives `serde::Deserialize` and
//! `stageflow::config::Settings`. The struct's doc comment becomes the
//! kind's one-line summary and each field's doc comment the help of that
//! setting, so the text users read in `stageflow kinds` is written once,
//! beside the field it describes. `#[default(value)]` on a field gives its
//! default (a string literal is converted with `Into`, so it also fills a
//! `String` or a `PathBuf`). A setting is required unless it has a default
//! (`#[default(...)]`, or serde's own `#[serde(default)]`) or its type is
//! `Option<_>`; a `#[serde(flatten)]` field contributes the settings of its
//! own type; `#[serde(rename = "...")]` on a field names the setting.
//! Unknown keys are the registry's to report (with a did-you-mean), so the
//! struct does not deny them itself, and settings structs flatten freely.
//!
//! `#[kind("name", In -> Out)]` does the same for a stage kind's settings
//! and adds its `stageflow::config::Signature`: the name pipeline files use
//! and the events it takes and emits (`, external_subscribers` when
//! subscribers may join at run time). What is left to write is `impl Kind`:
//! how it builds its stage.

use proc_macro::TokenStream;
use proc_macro2::{Ident, TokenTree};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, Fields, Lit, LitStr, Meta, Token, Type, parse_macro_input,
    parse_quote,
};

/// Derives `Deserialize` and `stageflow::config::Settings` for a settings struct (see the crate docs).
#[proc_macro_attribute]
pub fn settings(args: TokenStream, input: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let error = syn::Error::new(proc_macro2::Span::call_site(), "#[settings] takes no arguments");
        return error.to_compile_error().into();
    }
    derive(input, None)
}

/// `#[settings]` plus the kind's `Signature`: `#[kind("name", In -> Out)]` (see the crate docs).
#[proc_macro_attribute]
pub fn kind(args: TokenStream, input: TokenStream) -> TokenStream {
    derive(input, Some(parse_macro_input!(args as KindArgs)))
}

fn derive(input: TokenStream, kind: Option<KindArgs>) -> TokenStream {
    let mut input = parse_macro_input!(input as DeriveInput);
    expand(&mut input, kind).unwrap_or_else(|error| error.to_compile_error()).into()
}

/// `"name", In -> Out` and an optional `, external_subscribers`.
struct KindArgs {
    name: LitStr,
    input: Type,
    output: Type,
    external: bool,
}

impl Parse for KindArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = input.parse()?;
        input.parse::<Token![,]>()?;
        let takes = Type::without_plus(input)?;
        input.parse::<Token![->]>()?;
        let emits = Type::without_plus(input)?;
        let mut external = false;
        if input.parse::<Option<Token![,]>>()?.is_some() && !input.is_empty() {
            let flag: Ident = input.parse()?;
            if flag != "external_subscribers" {
                return Err(syn::Error::new(flag.span(), "expected `external_subscribers`"));
            }
            external = true;
        }
        Ok(KindArgs { name, input: takes, output: emits, external })
    }
}

fn expand(input: &mut DeriveInput, kind: Option<KindArgs>) -> syn::Result<proc_macro2::TokenStream> {
    let defaults = take_defaults(input)?;
    let docs = docs_impl(input)?;
    let signature = kind.map(|KindArgs { name, input: takes, output: emits, external }| {
        let ident = &input.ident;
        quote! {
            impl ::stageflow::config::Signature for #ident {
                const NAME: &'static str = #name;
                type In = #takes;
                type Out = #emits;
                const EXTERNAL_SUBSCRIBERS: bool = #external;
            }
        }
    });
    input.attrs.insert(0, parse_quote!(#[derive(::serde::Deserialize)]));
    Ok(quote! {
        #input
        #defaults
        #docs
        #signature
    })
}

/// Turns each field's `#[default(value)]` into `#[serde(default = "f")]` and the function `f`.
fn take_defaults(input: &mut DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let owner = input.ident.clone();
    let Data::Struct(data) = &mut input.data else {
        return Err(syn::Error::new(owner.span(), "#[settings] is for structs"));
    };
    let mut functions = Vec::new();
    for field in data.fields.iter_mut() {
        let Some(at) = field.attrs.iter().position(|attr| attr.path().is_ident("default")) else { continue };
        let attr = field.attrs.remove(at);
        let value: proc_macro2::TokenStream = attr.parse_args()?;
        let field_name = field.ident.as_ref().map_or_else(|| "field".to_string(), Ident::to_string);
        let function = format_ident!("__default_{}_{}", owner, field_name.trim_start_matches("r#"));
        let path = function.to_string();
        let ty = &field.ty;
        // A string literal may fill a String or a PathBuf; anything else is the value itself.
        let is_text = matches!(value.clone().into_iter().collect::<Vec<_>>().as_slice(),
            [TokenTree::Literal(literal)] if literal.to_string().starts_with('"'));
        let body = if is_text { quote!(::core::convert::Into::into(#value)) } else { value };
        functions.push(quote! {
            #[doc(hidden)]
            #[allow(non_snake_case)]
            fn #function() -> #ty {
                #body
            }
        });
        field.attrs.push(parse_quote!(#[serde(default = #path)]));
    }
    Ok(quote!(#(#functions)*))
}

/// `impl Settings`: the summary and the settings' docs, from the doc comments.
fn docs_impl(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let summary = doc_of(&input.attrs);
    if summary.is_empty() {
        return Err(syn::Error::new(
            input.ident.span(),
            "a settings struct needs a doc comment: its summary",
        ));
    }
    let container = serde_of(&input.attrs)?;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(input.ident.span(), "#[settings] is for structs"));
    };
    let fields = match &data.fields {
        Fields::Named(named) => named.named.iter().collect(),
        Fields::Unit => Vec::new(),
        Fields::Unnamed(_) => {
            return Err(syn::Error::new(
                input.ident.span(),
                "settings need named fields (they are TOML keys)",
            ));
        }
    };
    let mut pushes = Vec::new();
    for field in fields {
        let serde = serde_of(&field.attrs)?;
        let ty = &field.ty;
        if serde.flatten {
            pushes.push(quote! { docs.extend(<#ty as ::stageflow::config::Settings>::docs()); });
            continue;
        }
        let ident = field.ident.as_ref().expect("named fields have names");
        let name = serde.rename.unwrap_or_else(|| ident.to_string().trim_start_matches("r#").to_string());
        let help = doc_of(&field.attrs);
        if help.is_empty() {
            return Err(syn::Error::new(field.span(), "each setting needs a doc comment: its help text"));
        }
        let required = !(serde.default || container.default || is_option(ty));
        pushes.push(quote! {
            docs.push(::stageflow::config::SettingDoc { name: #name, required: #required, help: #help });
        });
    }
    let ident = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::stageflow::config::Settings for #ident #type_generics #where_clause {
            const SUMMARY: &'static str = #summary;
            fn docs() -> ::std::vec::Vec<::stageflow::config::SettingDoc> {
                #[allow(unused_mut)]
                let mut docs = ::std::vec::Vec::new();
                #(#pushes)*
                docs
            }
        }
    })
}

/// The doc comment's lines, trimmed and joined by spaces.
fn doc_of(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("doc")) {
        if let Meta::NameValue(pair) = &attr.meta
            && let Expr::Lit(literal) = &pair.value
            && let Lit::Str(text) = &literal.lit
        {
            let line = text.value();
            let line = line.trim();
            if !line.is_empty() {
                lines.push(line.to_string());
            }
        }
    }
    lines.join(" ")
}

/// The serde attributes that decide a setting's name and whether it is required.
#[derive(Default)]
struct SerdeAttrs {
    default: bool,
    flatten: bool,
    rename: Option<String>,
}

fn serde_of(attrs: &[Attribute]) -> syn::Result<SerdeAttrs> {
    let mut found = SerdeAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("default") {
                found.default = true;
                if meta.input.peek(syn::Token![=]) {
                    meta.value()?.parse::<Lit>()?;
                }
            } else if meta.path.is_ident("flatten") {
                found.flatten = true;
            } else if meta.path.is_ident("rename") && meta.input.peek(syn::Token![=]) {
                let Lit::Str(name) = meta.value()?.parse::<Lit>()? else {
                    return Err(meta.error("rename takes a string"));
                };
                found.rename = Some(name.value());
            } else if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<Lit>()?;
            } else if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<proc_macro2::TokenStream>()?;
            }
            Ok(())
        })?;
    }
    Ok(found)
}

/// Whether the type is written `Option<_>` (serde treats a missing key as `None`).
fn is_option(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none() && path.path.segments.last().is_some_and(|last| last.ident == "Option")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_arguments_are_a_name_and_in_to_out_with_an_optional_flag() {
        let plain: KindArgs = syn::parse_str(r#""numbers", Nothing -> u64"#).unwrap();
        assert_eq!((plain.name.value(), plain.external), ("numbers".to_string(), false));
        let output = &plain.output;
        assert_eq!(quote!(#output).to_string(), "u64");
        let open: KindArgs =
            syn::parse_str(r#""statistics", Nothing -> StatsFrame, external_subscribers"#).unwrap();
        assert!(open.external);
        for bad in ["numbers, Nothing -> u64", r#""numbers", Nothing"#, r#""numbers" Nothing -> u64"#] {
            assert!(syn::parse_str::<KindArgs>(bad).is_err(), "{bad}");
        }
        let flag = syn::parse_str::<KindArgs>(r#""n", u64 -> Nothing, external"#).err().unwrap();
        assert_eq!(flag.to_string(), "expected `external_subscribers`");
    }
}
