// SPDX-License-Identifier: GPL-2.0

//! Config space virtualization: the capability walk and permission tables of
//! `vfio_pci_config.c`.
