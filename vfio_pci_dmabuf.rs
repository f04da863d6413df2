// SPDX-License-Identifier: GPL-2.0

//! DMABUF export of BARs, BAR mmap() through a DMABUF, and revocation, as `vfio_pci_dmabuf.c`
//! with the series "vfio/pci: Convert BAR mmap() to use a DMABUF".
